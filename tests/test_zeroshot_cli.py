"""`groundup zeroshot` and `groundup embed --images` as a user runs them, on a tiny CLIP checkpoint and real
DINOv2 weights; the bad inputs the issue names get one-line errors and write nothing."""

from __future__ import annotations

import json

import numpy as np
import torch
from cli_helpers import groundup
from PIL import Image

from groundup.models.clip import CLIP, clip_preset, zero_shot_classifier, zero_shot_predict
from groundup.tokenizer_clip import ClipTokenizer
from groundup.train import save_checkpoint
from groundup.vision.preprocess import preprocess, spec_at


def _clip_checkpoint(path):
    torch.manual_seed(0)
    model = CLIP(clip_preset("clip-tiny", text={"n_layer": 1}, vision={"n_layer": 1}))
    return save_checkpoint(path, model), model


def _pictures(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_zeroshot_prints_the_models_top_labels_for_each_image(tmp_path):
    ckpt, model = _clip_checkpoint(tmp_path / "clip")
    pics = _pictures(tmp_path / "pics")
    labels = ["red apple", "grinning face", "dress", "sandal"]
    out = tmp_path / "pred.tsv"
    r = groundup("zeroshot", f"--model={ckpt}", f"--images={pics}", f"--labels={','.join(labels)}", "--top_k=2",
                 f"--out={out}")
    assert r.returncode == 0, r.stderr
    # the same numbers through the library: classifier from the labels' prompts, softmax over scaled cosines
    spec = spec_at("gray28", 28)
    pixels = preprocess([Image.open(pics / f"{i}.png") for i in range(3)], spec)
    probs = zero_shot_predict(model, zero_shot_classifier(model, ClipTokenizer(), labels, ["a photo of a {}."]),
                              pixels)
    lines = [x for x in r.stdout.splitlines() if x.startswith(str(pics))]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        top = probs[i].argsort(descending=True)[:2]
        want = "  ".join(f"{labels[int(j)]} {float(probs[i, j]):.1%}" for j in top)
        assert line == f"{pics / f'{i}.png'}\t{want}"
    rows = [x.split("\t") for x in out.read_text().splitlines()]
    assert [row[1] for row in rows] == [labels[int(probs[i].argmax())] for i in range(3)]


def test_zeroshot_and_embed_refuse_bad_input_and_write_nothing(tmp_path):
    ckpt, _ = _clip_checkpoint(tmp_path / "clip")
    pics = _pictures(tmp_path / "pics")
    out = tmp_path / "pred.tsv"
    cases = [
        (["--labels=cat"], "names 1 class(es)"),
        (["--labels=cat,cat"], "repeats a label"),
        (["--labels=cat,dog", "--top_k=0"], "--top_k=0"),
        (["--labels=cat,dog", f"--images={tmp_path / 'none.png'}"], "none.png"),
    ]
    for extra, message in cases:
        args = [f"--model={ckpt}", f"--images={pics}", *extra, f"--out={out}"]
        r = groundup("zeroshot", *args)
        assert r.returncode != 0 and message in r.stderr, (extra, r.stderr)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na picture\n")
    r = groundup("zeroshot", f"--model={ckpt}", f"--images={pics}", "--labels=cat,dog", f"--templates={templates}")
    assert r.returncode != 0 and "'a picture' has no {}" in r.stderr
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    r = groundup("zeroshot", f"--model={ckpt}", f"--images={corrupt}", "--labels=cat,dog", f"--out={out}")
    assert r.returncode != 0 and "corrupt.jpg: not a readable image" in r.stderr
    r = groundup("zeroshot", "--model=dinov2-vits14", f"--images={pics}", "--labels=cat,dog", f"--out={out}")
    assert r.returncode != 0 and "zeroshot needs a CLIP model" in r.stderr and "ViT" in r.stderr
    assert not out.exists()


def test_embed_images_with_dinov2_writes_normalised_rows_in_file_order(tmp_path):
    pics = _pictures(tmp_path / "pics")
    out = tmp_path / "emb.npy"
    r = groundup("embed", "--model=dinov2-vits14", f"--images={pics}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    vectors = np.load(out)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert out.with_suffix(".txt").read_text().splitlines() == [str(pics / f"{i}.png") for i in range(3)]
    assert not np.allclose(vectors[0], vectors[1])  # different images, different features


def test_pretrain_a_clip_on_emoji_and_fashion_then_zeroshot_with_it(tmp_path):
    run = tmp_path / "clip"
    r = groundup("pretrain", "--model.preset=clip-tiny", "--data.images=emoji+fashion-mnist",
                 "--data.held_out=[dress, coat, sandal]", "--train.max_steps=8", "--train.batch_size=32",
                 "--train.eval_every=8", "--train.eval_batches=1", f"--train.out_dir={run}", "--train.progress=false")
    assert r.returncode == 0, r.stderr
    scores = json.loads((run / "test_metrics.json").read_text())
    assert set(scores) == {"seen classes among 7 names", "held-out classes among their 3 names",
                           "held-out classes among all 10 names", "step"}
    assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k != "step")
    assert "zero-shot held-out classes among their 3 names" in r.stdout
    pics = _pictures(tmp_path / "pics", n=2)
    r = groundup("zeroshot", f"--model={run / 'ckpt'}", f"--images={pics}", "--labels=dress,coat")
    assert r.returncode == 0, r.stderr
    assert len([x for x in r.stdout.splitlines() if x.startswith(str(pics))]) == 2


def test_clip_pretraining_refuses_bad_data_options(tmp_path):
    out = tmp_path / "run"
    for extra, message in ((["--data.images=digits"], "--data.images='digits'"),
                           (["--data.images=fashion-mnist", "--data.held_out=[dress]"], "names one class"),
                           (["--data.images=fashion-mnist", "--data.held_out=[socks, coat]"], "['socks']")):
        r = groundup("pretrain", "--model.preset=clip-tiny", *extra, f"--train.out_dir={out}")
        assert r.returncode != 0 and message in r.stderr, (extra, r.stderr)
    assert not out.exists()
