"""Image-caption pairs for contrastive (CLIP) training, from assets a Debian machine installs locally.

    emoji font ──render each glyph──► (64x64 RGB, "red apple")        ┐
    Fashion-MNIST IDX ──read_idx──► (28x28 uint8, label) ──templates──► ├─► ImageTextData ─► get_batch:
                                      "a photo of a coat."             ┘   pixels (B, C, H, W), input_ids (B, 77),
                                                                          attention_mask (B, 77), caption_ids (B,)

Emoji: `apt-get install fonts-noto-color-emoji` (Noto Color Emoji, a CBDT colour-bitmap font); captions are
the Unicode names (Python's own Unicode database, so a newer font's newest emoji without a name there are
skipped). Fashion-MNIST (Xiao et al. 2017): `apt-get install dataset-fashion-mnist`. Nothing is downloaded.

`read_idx`, `fashion_mnist`, `FASHION_ROOT` and `FASHION_CLASSES` live here once; image classification
imports them from this module rather than keeping its own IDX reader.
"""

from __future__ import annotations

import gzip
import os
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch
from PIL import ImageDraw, ImageFont

from groundup.tokenizer_clip import ClipTokenizer
from groundup.vision.preprocess import SPECS, ImageSpec, preprocess

__all__ = ["CAPTION_TEMPLATES", "FASHION_CLASSES", "FASHION_ROOT", "NOTO_EMOJI", "ImageTextData", "emoji_pairs",
           "fashion_captions", "fashion_mnist", "read_idx", "split_by_class"]

NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
# CLIP-style prompts (Radford et al. 2021, sec. 3.1.4); the article stays "a" as in CLIP's own prompts, so
# training captions match the zero-shot prompts word for word.
CAPTION_TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a {} on a plain background.")

# ---------------------------------------------------------------------------------------------- emoji
_CBDT_SIZE = 109  # the only pixel size of Noto Color Emoji's bitmap strike; FreeType refuses any other
# Blocks that hold single-codepoint emoji, scanned only when fontTools (the font's cmap) is unavailable.
_EMOJI_RANGES = ((0x00A9, 0x00AE), (0x2000, 0x2BFF), (0x3000, 0x303F), (0x3200, 0x32FF), (0x1F000, 0x1FAFF))
_SKIP_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Mn", "Me", "Zs"}  # controls, ZWJ/VS/tags, unassigned, private, keycap


def _emoji_caption(cp: int) -> str | None:
    """The caption of a standalone emoji codepoint, or None for one that is not an emoji on its own."""
    if cp < 0x80:  # '#', '*', '0'-'9': emoji only inside a keycap sequence with U+20E3
        return None
    if 0x1F3FB <= cp <= 0x1F3FF or 0x1F1E6 <= cp <= 0x1F1FF:  # skin-tone modifiers; regional indicators (flags
        return None  # exist only as pairs)
    ch = chr(cp)
    if unicodedata.category(ch) in _SKIP_CATEGORIES:
        return None
    return unicodedata.name(ch, "").lower() or None


def _font_codepoints(font_path: Path) -> list[int]:
    """Codepoints with a glyph: the font's cmap through fontTools if installed, else the emoji blocks (glyphs
    the font lacks render empty and are dropped by the caller)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return [cp for lo, hi in _EMOJI_RANGES for cp in range(lo, hi + 1)]
    try:
        return sorted(TTFont(font_path, lazy=True).getBestCmap())
    except Exception as e:  # fontTools raises assorted errors on a damaged file
        raise ValueError(f"emoji_pairs(font_path={str(font_path)!r}): not a readable font ({type(e).__name__}: "
                         f"{e}); pass the path of NotoColorEmoji.ttf") from e


def _render(font: ImageFont.FreeTypeFont, ch: str, size: int, background: tuple[int, int, int]
            ) -> PIL.Image.Image | None:
    """One glyph, cropped to its drawn pixels, centred on a square `background`, resized to size x size."""
    left, top, right, bottom = font.getbbox(ch)
    if right <= left or bottom <= top:  # a codepoint the font lacks has a zero-height box
        return None
    glyph = PIL.Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((-left, -top), ch, font=font, embedded_color=True)
    box = glyph.getchannel("A").getbbox()  # tight box of the opaque pixels; None when nothing was drawn
    if box is None:
        return None
    glyph = glyph.crop(box)
    side = max(glyph.size)
    canvas = PIL.Image.new("RGB", (side, side), background)
    canvas.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2), mask=glyph)  # alpha-composite
    # resize the composited RGB, not the RGBA: resampling straight alpha would bleed the transparent black in
    return canvas.resize((size, size), PIL.Image.Resampling.LANCZOS)


def emoji_pairs(font_path: str | os.PathLike = NOTO_EMOJI, size: int = 64,
                background: tuple[int, int, int] = (255, 255, 255)) -> list[tuple[PIL.Image.Image, str]]:
    """(image, caption) for every single-codepoint emoji the font draws, ordered by codepoint: ~1.36k pairs
    from Debian's Noto Color Emoji (about 1.5 s on one core). Images are RGB `size` x `size`, the glyph
    scaled to fill the square and centred, on a white background by default (the colour `preprocess`
    composites transparency onto); captions are lower-cased Unicode names ("red apple"). Skipped:
    codepoints without a name, skin-tone modifiers, regional indicators, ASCII keycap bases, joiners,
    variation selectors, tags and glyphs that render empty."""
    path = Path(font_path)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"emoji_pairs(size={size!r}): give the image side as a positive int, e.g. size=64")
    if not path.is_file():
        raise FileNotFoundError(f"emoji_pairs(font_path={str(path)!r}): no such font file; install it with "
                                "`apt-get install fonts-noto-color-emoji`, or pass font_path= a colour emoji font")
    try:  # BASIC layout: one codepoint needs no shaping, and raqm fails outright on some codepoints
        font = ImageFont.truetype(str(path), _CBDT_SIZE, layout_engine=ImageFont.Layout.BASIC)
    except OSError as e:
        raise ValueError(f"emoji_pairs(font_path={str(path)!r}): Pillow cannot open it at size {_CBDT_SIZE} "
                         f"({e}); pass a CBDT colour emoji font such as NotoColorEmoji.ttf") from e
    pairs = []
    for cp in _font_codepoints(path):
        caption = _emoji_caption(cp)
        image = _render(font, chr(cp), size, background) if caption else None
        if image is not None:
            pairs.append((image, caption))
    return pairs


# -------------------------------------------------------------------------------------- Fashion-MNIST
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped or not) -> a native-endian numpy array of its shape.

    Header: two zero bytes, a dtype code, the number of dims, then each dim as a big-endian uint32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_idx({str(path)!r}): no such file; check the path")
    fix = "the file is corrupt or not IDX; reinstall or re-download it"
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decompress in memory (47 MB for Fashion-MNIST's train images)
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"read_idx({str(path)!r}): cannot decompress ({type(e).__name__}: {e}); {fix}") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"read_idx({str(path)!r}): bad magic number {raw[:4].hex() or 'none'} (want 0000, a dtype "
                         f"code in {[hex(c) for c in _IDX_DTYPES]}, a dim count >= 1); {fix}")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx({str(path)!r}): header promises {ndim} dims but the file ends first; {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != want:
        raise ValueError(f"read_idx({str(path)!r}): shape {shape} needs {want} data bytes, the file holds "
                         f"{len(raw) - header} (truncated?); {fix}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))  # a copy


def fashion_mnist(root: str | os.PathLike = FASHION_ROOT, split: Literal["train", "test"] = "train"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's `split` -> images uint8 (N, 28, 28) and labels int64 (N,) in 0..9 (FASHION_CLASSES).
    train: 60,000 images, test: 10,000; read from the Debian package's IDX files (gzipped or not)."""
    if split not in ("train", "test"):
        raise ValueError(f"fashion_mnist(split={split!r}): use 'train' (60,000 images) or 'test' (10,000)")
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = Path(root) / f"{prefix}-{kind}-ubyte"
        path = next((p for p in (name.with_name(name.name + ".gz"), name) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"fashion_mnist(root={str(root)!r}): {name}.gz not found; install the data with "
                                    "`apt-get install dataset-fashion-mnist`, or pass root= the folder holding the "
                                    "Fashion-MNIST IDX files")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"fashion_mnist(root={str(root)!r}, split={split!r}): images {images.shape} {images.dtype} "
                         f"and labels {labels.shape} are not Fashion-MNIST's (N, 28, 28) uint8 and (N,); check root")
    if labels.size and labels.max() >= len(FASHION_CLASSES):
        raise ValueError(f"fashion_mnist(root={str(root)!r}): label {labels.max()} is outside 0..9; check root")
    return images, labels.astype(np.int64)


def fashion_captions(labels: Sequence[int] | np.ndarray, templates: Sequence[str] = CAPTION_TEMPLATES,
                     seed: int = 0, classes: Sequence[str] = FASHION_CLASSES) -> list[str]:
    """One caption per label: a template drawn uniformly (numpy Generator(seed), so reproducible), filled with
    the class name. A template holds exactly one "{}"."""
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"fashion_captions(templates={list(templates)!r}): every template needs exactly one '{{}}' "
                         "for the class name, e.g. 'a photo of a {}.'")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"fashion_captions(labels=...): labels must be in 0..{len(classes) - 1} (one per class name)")
    which = np.random.default_rng(seed).integers(len(templates), size=len(labels))
    return [templates[t].format(classes[c]) for t, c in zip(which.tolist(), labels.tolist(), strict=True)]


def split_by_class(labels: Sequence[int] | np.ndarray, held_out: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(seen, unseen) row indices: unseen rows have a label in `held_out`. Zero-shot evaluation trains on the
    seen rows only and scores the unseen classes, whose names the model met only as words."""
    labels = np.asarray(labels, dtype=np.int64)
    missing = sorted(set(held_out) - set(labels.tolist()))
    if missing:
        raise ValueError(f"split_by_class(held_out={list(held_out)}): classes {missing} have no rows; "
                         f"hold out classes among {sorted(set(labels.tolist()))}")
    unseen = np.isin(labels, list(held_out))
    return np.flatnonzero(~unseen), np.flatnonzero(unseen)


# -------------------------------------------------------------------------------------- batch source
def _pixels(images: Sequence, spec: ImageSpec, chunk: int = 2048) -> torch.Tensor:
    """All images -> float32 (N, C, size, size) by `preprocess`: uint8 arrays of one shape as one batch (its
    vectorised path when they are already at the model's size), anything else a chunk at a time (bounded PIL
    memory)."""
    first = getattr(images[0], "shape", None)
    if all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == first for x in images):
        batch = np.stack(images)
        return preprocess(batch[..., None] if batch.ndim == 3 else batch, spec)  # (N, H, W) gray: a channel axis
    out = torch.empty(len(images), spec.channels, spec.size, spec.size)
    for i in range(0, len(images), chunk):
        out[i:i + chunk] = preprocess(list(images[i:i + chunk]), spec)
    return out


_REPLACES = {"image_features": ("pixels",), "text_features": ("input_ids", "attention_mask")}


class ImageTextData:
    """A `BatchSource` of image-caption pairs for CLIP training; all preprocessing happens once, here.

    `pairs`: (image, caption) with the image a PIL image, a uint8 array or a path. Images become
    `self.pixels` float32 (N, C, H, W) normalised by `spec` (an ImageSpec or a SPECS name; memory is
    N*C*H*W*4 bytes, 0.19 GB for Fashion-MNIST at 28x28 gray). Distinct captions are tokenised once into
    (N, 77) ids; the mask marks <start_of_text> .. <end_of_text> (not ids != 0: id 0 is the token "!").
    A seeded permutation puts int(N * val_fraction) rows in "val", the rest in "train".

    get_batch draws rows without replacement. With sampling="rows" (uniform over rows), templated data
    such as Fashion-MNIST (10 classes x 3 templates = 30 distinct texts) repeats caption texts inside a
    batch, and CLIP's loss with arange targets then counts an identical text as a negative of its own
    image. `caption_ids` (B,) lets a loss use `caption_ids[:, None] == caption_ids[None]` as multi-positive
    targets instead. sampling="captions" avoids duplicates: one random row per distinct caption, at most
    as many rows as distinct captions (uniform over captions rather than rows). `groups` (N,) ints widen
    the positives beyond equal text: batches then carry them as `caption_ids` (e.g. the class label, so two
    images of one class captioned by different templates are positives of each other, not negatives).

    `set_features("image_features" | "text_features", (N, d))` attaches a locked tower's precomputed
    features (see `groundup.models.clip.cache_locked_tower`); batches then carry them in place of pixels
    or of input_ids / attention_mask.
    """

    def __init__(self, pairs: Sequence[tuple[object, str]], tokenizer: ClipTokenizer, spec: ImageSpec | str = "clip",
                 val_fraction: float = 0.1, seed: int = 0, sampling: Literal["rows", "captions"] = "rows",
                 groups: Sequence[int] | None = None) -> None:
        if isinstance(spec, str) and spec not in SPECS:
            raise ValueError(f"ImageTextData(spec={spec!r}): unknown; known: {sorted(SPECS)}, or pass an ImageSpec")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"ImageTextData(val_fraction={val_fraction}): must be in [0, 1), e.g. 0.1")
        if sampling not in ("rows", "captions"):
            raise ValueError(f"ImageTextData(sampling={sampling!r}): use 'rows' or 'captions'")
        if not pairs:
            raise ValueError("ImageTextData(pairs=[]): give at least one (image, caption) pair")
        for i, pair in enumerate(pairs):
            ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str)
            if not (ok and pair[1].strip()):
                raise ValueError(f"ImageTextData: pairs[{i}] is not an (image, non-empty caption) pair; "
                                 f"got {type(pair).__name__} {str(pair)[:80]!r}")
        if groups is not None and len(groups) != len(pairs):
            raise ValueError(f"ImageTextData(groups=...): {len(groups)} group ids for {len(pairs)} pairs; give one "
                             "int per pair (or None: pairs with the same caption are the positives)")
        self.spec, self.sampling = SPECS[spec] if isinstance(spec, str) else spec, sampling
        self.captions = list(dict.fromkeys(p[1] for p in pairs))  # distinct texts, in first-seen order
        index = {c: i for i, c in enumerate(self.captions)}
        self.caption_ids = torch.tensor([index[p[1]] for p in pairs], dtype=torch.long)  # (N,)
        self.groups = self.caption_ids if groups is None else torch.as_tensor(groups, dtype=torch.long)  # (N,)
        self.features: dict[str, torch.Tensor] = {}
        self.pixels = _pixels([p[0] for p in pairs], self.spec)  # (N, C, H, W)
        ids = tokenizer(self.captions)  # (U, 77), one row per distinct text
        eot = (ids == tokenizer.eot_id).int().argmax(dim=1)  # (U,) first <end_of_text>; truncation keeps one
        mask = (torch.arange(ids.shape[1]) <= eot[:, None]).long()  # (U, 77)
        self.input_ids, self.attention_mask = ids[self.caption_ids], mask[self.caption_ids]  # (N, 77) each
        n = len(pairs)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = int(n * val_fraction)
        self.splits = {"val": perm[:n_val].sort().values, "train": perm[n_val:].sort().values}  # train never empty

    def __len__(self) -> int:
        return len(self.caption_ids)

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """batch_size distinct rows of `split`, every draw from `generator`."""
        if split not in self.splits:
            raise ValueError(f"get_batch(split={split!r}): use one of {sorted(self.splits)}")
        rows = self.splits[split]
        if self.sampling == "captions":
            rows = self._one_per_caption(rows, generator)
        if not 1 <= batch_size <= len(rows):
            what = "distinct captions" if self.sampling == "captions" else "rows"
            raise ValueError(f"get_batch({split!r}, batch_size={batch_size}): the split has {len(rows)} {what} and "
                             "a batch draws without replacement; use batch_size <= that (or a larger val_fraction"
                             + (", or sampling='rows')" if self.sampling == "captions" else ")"))
        pick = rows[torch.randperm(len(rows), generator=generator)[:batch_size]]  # (B,)
        batch = {"pixels": self.pixels[pick], "input_ids": self.input_ids[pick],
                 "attention_mask": self.attention_mask[pick], "caption_ids": self.groups[pick]}
        for key, feats in self.features.items():  # a cached tower's input is not needed any more
            for raw in _REPLACES[key]:
                batch.pop(raw)
            batch[key] = feats[pick]
        return batch

    def set_features(self, key: str, features: torch.Tensor) -> None:
        """Attach precomputed (N, d) tower features: batches carry them under `key` instead of that tower's input."""
        if key not in _REPLACES:
            raise ValueError(f"ImageTextData.set_features(key={key!r}): use one of {sorted(_REPLACES)}")
        if features.dim() != 2 or len(features) != len(self):
            raise ValueError(f"ImageTextData.set_features({key!r}): features {tuple(features.shape)} must be "
                             f"(N={len(self)}, d), one row per pair in the pairs' order")
        self.features[key] = features

    def _one_per_caption(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random row of `rows` for each distinct caption among them."""
        cid = self.caption_ids[rows]
        order = torch.argsort(cid, stable=True)
        _, sizes = torch.unique_consecutive(cid[order], return_counts=True)  # (G,)
        starts = torch.cumsum(sizes, 0) - sizes
        offset = (torch.rand(len(sizes), generator=generator, dtype=torch.float64) * sizes).long()  # < size
        return rows[order[starts + offset]]


# -------------------------------------------------------------------------------------- CLIP training sets
CAPTION_SOURCES = ("emoji", "fashion-mnist")


def caption_pairs(sources: Sequence[str] = CAPTION_SOURCES, held_out: Sequence[int] = (), per_class: int | None = None,
                  strict: bool = False, seed: int = 0, size: int = 28, gray: bool = True,
                  ) -> tuple[list[tuple[object, str]], list[int]]:
    """(pairs, groups) for CLIP training: Noto emoji on black with their names (each its own group) and/or
    Fashion-MNIST training images of the classes not in `held_out`, captioned from CAPTION_TEMPLATES (the class is
    the group: two images of one class are positives of each other). per_class: a seeded subset of that many
    images per seen class (None: all). strict: also drop the emoji whose caption names a held-out class, so its
    word never appears in training. Emoji are `size` pixels, grayscale when `gray` (Fashion-MNIST's form)."""
    unknown = sorted(set(sources) - set(CAPTION_SOURCES))
    if unknown or not sources:
        raise ValueError(f"caption sources {unknown or list(sources)}: use one or more of {list(CAPTION_SOURCES)}")
    bad = [c for c in held_out if not 0 <= c < len(FASHION_CLASSES)]
    if bad:
        raise ValueError(f"held-out classes {bad}: Fashion-MNIST classes are 0..9 ({', '.join(FASHION_CLASSES)})")
    pairs: list[tuple[object, str]] = []
    groups: list[int] = []
    if "emoji" in sources:
        words = {FASHION_CLASSES[c] for c in held_out}
        for img, cap in emoji_pairs(size=size, background=(0, 0, 0)):
            if strict and words & set(re.findall(r"[a-z-]+", cap)):
                continue
            pairs.append((img.convert("L") if gray else img, cap))
            groups.append(len(FASHION_CLASSES) + len(groups))
    if "fashion-mnist" in sources:
        images, labels = fashion_mnist(split="train")
        rng = np.random.default_rng(seed)
        seen = [c for c in range(len(FASHION_CLASSES)) if c not in held_out]
        rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in seen])
        pairs += list(zip(images[rows], fashion_captions(labels[rows], seed=seed), strict=True))
        groups += labels[rows].tolist()
    return pairs, groups
