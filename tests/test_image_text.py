"""Image-caption data: emoji rendered from the Debian font, Fashion-MNIST from the Debian IDX files, batches."""

from __future__ import annotations

import gzip
import unicodedata

import numpy as np
import PIL.Image
import pytest
import torch

from groundup.data import image_text
from groundup.data.image_text import (
    CAPTION_TEMPLATES,
    FASHION_CLASSES,
    ImageTextData,
    emoji_pairs,
    fashion_captions,
    fashion_mnist,
    read_idx,
    split_by_class,
)
from groundup.tokenizer_clip import ClipTokenizer
from groundup.vision.preprocess import ImageSpec, preprocess

SPEC32 = ImageSpec(32, None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def emoji():
    return emoji_pairs()  # ~1.5 s: rendered once for the module


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


# ----------------------------------------------------------------------------------------------- emoji
def test_emoji_pairs_cover_the_font_in_codepoint_order(emoji):
    assert 1000 <= len(emoji) <= 2000
    captions = [c for _, c in emoji]
    assert all(c and c == c.lower() for c in captions) and len(set(captions)) == len(captions)
    codepoints = [ord(unicodedata.lookup(c)) for c in captions]  # each caption names one codepoint
    assert codepoints == sorted(codepoints)
    assert not any(0x1F3FB <= cp <= 0x1F3FF or 0x1F1E6 <= cp <= 0x1F1FF or cp < 0x80 for cp in codepoints)
    assert {"smiling face with open mouth", "snowman", "copyright sign"} <= set(captions)
    assert all(isinstance(im, PIL.Image.Image) and im.mode == "RGB" and im.size == (64, 64) for im, _ in emoji)


def test_red_apple_is_red_on_white(emoji):
    image = dict((c, im) for im, c in emoji)["red apple"]
    px = np.asarray(image, dtype=np.float64)  # (64, 64, 3)
    assert (px[0, 0] == 255).all()  # the white background
    inside = (px < 230).any(axis=2)  # the glyph: pixels that are not background
    assert inside.mean() > 0.3  # cropped and scaled to fill the square
    r, g, b = px[inside].mean(axis=0)
    assert r > g + 40 and r > b + 40


def test_render_size_missing_glyph_and_fallback_ranges():
    from PIL import ImageFont
    font = ImageFont.truetype(str(image_text.NOTO_EMOJI), 109, layout_engine=ImageFont.Layout.BASIC)
    im = image_text._render(font, "\U0001F34E", 17, (0, 0, 0))
    assert im.size == (17, 17) and im.mode == "RGB" and im.getpixel((0, 0)) == (0, 0, 0)
    assert image_text._render(font, "\u0378", 17, (0, 0, 0)) is None  # no glyph -> renders empty -> skipped
    # without fontTools the emoji blocks are scanned instead: they must hold every emoji the cmap gives
    kept = {cp for cp in image_text._font_codepoints(image_text.NOTO_EMOJI) if image_text._emoji_caption(cp)}
    scanned = {cp for lo, hi in image_text._EMOJI_RANGES for cp in range(lo, hi + 1)}
    assert kept <= scanned


def test_emoji_bad_font_path_and_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        emoji_pairs(tmp_path / "none.ttf")
    (tmp_path / "junk.ttf").write_bytes(b"not a font")
    with pytest.raises(ValueError, match="junk.ttf"):
        emoji_pairs(tmp_path / "junk.ttf")
    with pytest.raises(ValueError, match="size"):
        emoji_pairs(size=0)


# --------------------------------------------------------------------------------------------- IDX
def _idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape) + payload


def test_read_idx_known_arrays(tmp_path):
    (tmp_path / "u8.idx.gz").write_bytes(gzip.compress(_idx(0x08, (2, 3), bytes(range(6)))))
    got = read_idx(tmp_path / "u8.idx.gz")
    assert got.dtype == np.uint8 and np.array_equal(got, np.arange(6, dtype=np.uint8).reshape(2, 3))
    big = b"".join(v.to_bytes(4, "big", signed=True) for v in (1, -2, 300000))
    (tmp_path / "i32.idx").write_bytes(_idx(0x0C, (3,), big))  # not gzipped: read as is
    got = read_idx(tmp_path / "i32.idx")
    assert got.dtype == np.int32 and got.dtype.isnative and got.tolist() == [1, -2, 300000]
    got.flags.writeable or pytest.fail("read_idx must return a writable array (torch.from_numpy warns otherwise)")


def test_read_idx_clear_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + bytes(12)))
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx(0x08, (2, 3), bytes(5)))
    with pytest.raises(ValueError, match=r"needs 6 data bytes, the file holds 5"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(_idx(0x08, (4,), bytes(4)))[:-6])
    with pytest.raises(ValueError, match="decompress"):
        read_idx(broken)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_idx(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_real_files():
    images, labels = fashion_mnist(split="train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced by construction
    test_images, test_labels = fashion_mnist(split="test")
    assert test_images.shape == (10000, 28, 28) and len(test_labels) == 10000


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="'train'"):
        fashion_mnist(split="val")


def test_fashion_captions_and_class_split():
    labels = np.array([0, 9, 4, 4, 1])
    caps = fashion_captions(labels, seed=3)
    assert caps == fashion_captions(labels, seed=3)  # reproducible
    allowed = [{t.format(FASHION_CLASSES[y]) for t in CAPTION_TEMPLATES} for y in labels]
    assert all(c in ok for c, ok in zip(caps, allowed, strict=True))
    assert fashion_captions([9], ["{}"]) == ["ankle boot"]
    with pytest.raises(ValueError, match="exactly one"):
        fashion_captions(labels, ["no slot"])
    with pytest.raises(ValueError, match="0..9"):
        fashion_captions([10])
    seen, unseen = split_by_class(labels, [4, 9])
    assert seen.tolist() == [0, 4] and unseen.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match=r"classes \[7\] have no rows"):
        split_by_class(labels, [7])


# --------------------------------------------------------------------------------------------- batches
def _gray_pairs(n: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (28, 28), dtype=np.uint8), f"item number {i}") for i in range(n)]


def test_batches_shapes_determinism_and_splits(tok):
    data = ImageTextData(_gray_pairs(50), tok, "gray28", val_fraction=0.2, seed=1)
    train, val = data.splits["train"], data.splits["val"]
    assert len(val) == 10 and len(train) == 40 and not set(train.tolist()) & set(val.tolist())
    b1 = data.get_batch("train", 40, torch.Generator().manual_seed(5))
    b2 = data.get_batch("train", 40, torch.Generator().manual_seed(5))
    assert b1.keys() == {"pixels", "input_ids", "attention_mask", "caption_ids"}
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert b1["pixels"].shape == (40, 1, 28, 28) and b1["input_ids"].shape == b1["attention_mask"].shape == (40, 77)
    rows = b1["caption_ids"]  # captions are unique here, so caption id == row
    assert len(set(rows.tolist())) == 40 and set(rows.tolist()) == set(train.tolist())  # no row twice
    assert set(data.get_batch("val", 10, torch.Generator())["caption_ids"].tolist()) == set(val.tolist())
    assert ImageTextData(_gray_pairs(50), tok, "gray28", 0.2, seed=1).splits["val"].equal(val)  # seeded split
    ids, mask = b1["input_ids"][0], b1["attention_mask"][0]
    n = int(mask.sum())
    assert ids[0] == tok.sot_id and ids[n - 1] == tok.eot_id and not mask[n:].any() and not ids[n:].any()
    with pytest.raises(ValueError, match="batch_size=41"):
        data.get_batch("train", 41, torch.Generator())
    with pytest.raises(ValueError, match="'test'"):
        data.get_batch("test", 4, torch.Generator())


def test_fast_pixels_equal_preprocess(tok):
    pairs = _gray_pairs(6)
    for spec in ("gray28", ImageSpec(28, None, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))):  # gray -> gray and -> RGB
        got = ImageTextData(pairs, tok, spec, val_fraction=0.0).pixels
        assert torch.equal(got, preprocess([im for im, _ in pairs], spec))


def test_templated_captions_and_caption_sampling(tok):
    labels = np.arange(60) % 10
    pairs = list(zip(np.zeros((60, 28, 28), np.uint8), fashion_captions(labels, seed=0), strict=True))
    data = ImageTextData(pairs, tok, "gray28", val_fraction=0.0, sampling="captions")
    assert len(data.captions) <= 30 and len(data) == 60
    n = len(set(data.caption_ids.tolist()))
    batch = data.get_batch("train", n, torch.Generator().manual_seed(0))
    assert len(set(batch["caption_ids"].tolist())) == n  # every text once: contrastive targets are exact
    with pytest.raises(ValueError, match="distinct captions"):
        data.get_batch("train", n + 1, torch.Generator())


def test_emoji_batches_from_pil_images(emoji, tok):
    data = ImageTextData(emoji[:200], tok, SPEC32, val_fraction=0.1, seed=0)
    batch = data.get_batch("train", 16, torch.Generator().manual_seed(0))
    assert batch["pixels"].shape == (16, 3, 32, 32) and batch["pixels"].min() >= -1 and batch["pixels"].max() <= 1
    assert torch.equal(data.pixels[:2], preprocess([im for im, _ in emoji[:2]], SPEC32))


def test_bad_pairs(tok):
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        ImageTextData([(np.zeros((28, 28), np.uint8), "ok"), (np.zeros((28, 28), np.uint8), "")], tok, "gray28")
    with pytest.raises(ValueError, match="has 0 rows"):  # val_fraction=0: an empty val split, said so
        ImageTextData(_gray_pairs(3), tok, "gray28", val_fraction=0.0).get_batch("val", 1, torch.Generator())
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        ImageTextData(_gray_pairs(3), tok, "gray28", val_fraction=1.0)
