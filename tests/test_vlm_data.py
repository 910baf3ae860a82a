"""Vision-language data (data/vlm.py, data/vlm_tasks.py) and `groundup finetune --method flamingo|llava` end to end
on tiny models: LLaVA records checked before anything runs, the loss on the answers only, disjoint train / test
images, a run whose saved connector `chat` reproduces."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from serve_helpers import chat_tokenizer, tiny_decoder

from groundup.cli import main
from groundup.config import VisionConfig, VisionLMConfig
from groundup.data.vlm import VLMData, VLMFormatError, encode_example, load_llava_json, parse_llava
from groundup.data.vlm_tasks import write_vlm_task
from groundup.generate import GenerationConfig
from groundup.loading import load_pretrained
from groundup.models.flamingo import VisionLM
from groundup.models.vit import ViT
from groundup.train.checkpoint import save_checkpoint
from groundup.vlm import answer, questions


def record(image="a.png", question="<image>\nWhat is in this image?", reply="A cat."):
    return {"image": image, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base decoder and ViT saved as checkpoints, and LLaVA data with real PNG files."""
    root = tmp_path_factory.mktemp("vlm-data")
    tok = chat_tokenizer()
    base = save_checkpoint(root / "base", tiny_decoder(tok.vocab_size), tokenizer=tok)
    torch.manual_seed(1)
    vit = save_checkpoint(root / "vit", ViT(VisionConfig(image_size=28, patch_size=7, d_model=48, n_head=4,
                                                         n_layer=1)))
    rng = np.random.default_rng(0)
    for i in range(6):
        PIL.Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / f"{i}.png")
    records = [record(f"{i}.png", reply=f"Picture {i}.") for i in range(6)]
    (root / "train.json").write_text(json.dumps(records[:4]))
    (root / "test.json").write_text(json.dumps(records[4:]))
    return root, base, vit, tok


def test_records_are_checked_and_name_the_record(tmp_path):
    cases = [
        ([record(question="What is in this image?")], "record 0: 0 <image> marker.* but 1 image"),
        ([record(), record(image=["a.png", "b.png"])], "record 1: 1 <image> marker.* but 2 image"),
        ([{"image": "a.png"}], "record 0: needs a non-empty 'conversations'"),
        ([record(reply="<image> no")], "record 0, conversations\\[1\\]: an answer cannot hold <image>"),
        ([{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]}], "no 'gpt' turn"),
        ([{"image": "a.png", "conversations": [{"from": "robot", "value": "<image>"}]}], "needs 'from'"),
    ]
    for records, message in cases:
        with pytest.raises(VLMFormatError, match=message):
            parse_llava(records)
    (tmp_path / "bad.json").write_text("[{not json")
    with pytest.raises(VLMFormatError, match="not JSON"):
        load_llava_json(tmp_path / "bad.json")


def test_loss_is_on_the_answers_only_and_images_become_their_tokens(tiny):
    root, base, vit, tok = tiny
    for kind in ("flamingo", "llava"):
        model = VisionLM(load_pretrained(base)[0], load_pretrained(vit)[0], VisionLMConfig(kind=kind, pool=2))
        ex = load_llava_json(root / "train.json")[0]
        ids, train = encode_example(ex, tok, model, tok.chat_template)
        assert (ids == model.image_id).sum() == model.tokens_per_image  # one image, its placeholders
        answer_text = tok.decode(ids[train].tolist())
        assert answer_text.startswith("Picture 0.") and "What is in" not in answer_text
        batch = VLMData([ex], tok, model, 96).batch([0])
        labelled = batch["labels"][0][batch["labels"][0] != -100]
        assert tok.decode(labelled.tolist()) == answer_text  # the labels are the answer, shifted by one
        assert batch["media"].shape[:2] == (1, 1)


def test_an_image_that_does_not_decode_names_its_record(tiny, tmp_path):
    root, base, vit, tok = tiny
    (tmp_path / "broken.png").write_bytes(b"not a png")
    examples = parse_llava([record(str(root / "0.png")), record(str(tmp_path / "broken.png"))])
    model = VisionLM(load_pretrained(base)[0], load_pretrained(vit)[0], VisionLMConfig())
    with pytest.raises(VLMFormatError, match="record 1: an image cannot be read"):
        VLMData(examples, tok, model, 96)


def test_the_task_keeps_train_and_test_images_apart(tmp_path):
    counts = write_vlm_task(tmp_path, fashion_train_per_class=3, fashion_test_per_class=2)
    train, test = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("train", "test"))
    assert (len(train), len(test)) == (counts["train"], counts["test"])
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    assert all((tmp_path / r["image"]).is_file() for r in train + test)
    replies = [r["conversations"][1]["value"] for r in test]
    assert "A coat." in replies and any(r in ("Red.", "Blue.", "Green.", "Yellow.") for r in replies)


@pytest.mark.parametrize("kind", ["flamingo", "llava"])
def test_finetune_cli_trains_the_connector_and_chat_reproduces_it(tiny, tmp_path, capsys, kind):
    root, base, vit, tok = tiny
    out = tmp_path / "run"
    assert main(["finetune", "--method", kind, "--model", str(base), "--vision", str(vit), "--data.path",
                 str(root / "train.json"), "--eval_data", str(root / "test.json"), "--out_dir", str(out),
                 "--train.max_steps", "3", "--train.batch_size", "2", "--train.eval_every", "0",
                 "--vlm.pool", "2", "--vlm.cross_every", "1", "--eval_max_new_tokens", "4"]) == 0
    model, tok2 = load_pretrained(out / "vlm")
    assert isinstance(model, VisionLM) and model.vlm_config.kind == kind
    moved = [n for n, p in model.named_parameters() if n.endswith("_gate") and float(p.detach().abs()) > 0]
    assert kind == "llava" or moved  # training opened Flamingo's gates
    capsys.readouterr()
    assert main(["chat", "--model", str(out / "vlm"), "--image", str(root / "4.png"), "--message",
                 "What is in this image?", "--max_new_tokens", "4", "--dtype", "fp32"]) == 0
    (q, _), = questions(load_llava_json(root / "test.json")[:1])
    want = answer(model, tok2, [q], GenerationConfig(max_new_tokens=4, temperature=0.0, stop=("<|im_end|>",)))[0]
    assert capsys.readouterr().out == want.split("<|im_end|>")[0] + "\n"


def test_finetune_cli_refuses_bad_data_before_writing(tiny, tmp_path, capsys):
    root, base, vit, _ = tiny
    (tmp_path / "bad.json").write_text(json.dumps([record("0.png", question="no marker")]))
    out = tmp_path / "run"
    assert main(["finetune", "--method", "flamingo", "--model", str(base), "--vision", str(vit), "--data.path",
                 str(tmp_path / "bad.json"), "--out_dir", str(out)]) != 0
    assert "record 0: 0 <image> marker" in capsys.readouterr().err
    assert not out.exists()


def test_a_clip_checkpoint_lends_its_image_tower(tmp_path):
    from groundup.models.clip import CLIP, clip_preset
    from groundup.vlm import load_vision_encoder

    torch.manual_seed(0)
    clip = CLIP(clip_preset("clip-tiny"))
    tower = load_vision_encoder(str(save_checkpoint(tmp_path / "clip", clip)))
    assert isinstance(tower, ViT)
    torch.testing.assert_close(tower.state_dict(), clip.visual.state_dict())
    with pytest.raises(ValueError, match="not an image encoder"):
        load_vision_encoder(str(save_checkpoint(tmp_path / "lm", tiny_decoder(50))))
