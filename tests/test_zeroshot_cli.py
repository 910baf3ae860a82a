"""`groundup zeroshot` and `groundup embed --images` as a user runs them, on a tiny CLIP checkpoint and real
DINOv2 weights; the bad inputs the issue names get one-line errors and write nothing."""

from __future__ import annotations

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
