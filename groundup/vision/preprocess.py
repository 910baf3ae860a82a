"""Images -> the normalised (B, C, size, size) float tensor a vision encoder takes.

    file / PIL image / uint8 array ─► RGB (or L) ─► resize shorter side (aspect kept) ─► centre crop
                                   ─► [0, 1] floats ─► (x - mean) / std

A pretrained encoder only sees what it was trained on if its preprocessing is reproduced exactly, so the
steps follow torchvision's Resize(resize) + CenterCrop(size) + ToTensor + Normalize on PIL images (what
DINOv2 and OpenAI CLIP use): the longer side becomes int(resize * long / short), the resampling is PIL's
own (antialiased), and the crop's top-left corner is int(round((h - size) / 2.0)), Python's round included.

Transparent pixels (RGBA, LA, PA, P with a transparency entry) are composited on white, not dropped to
whatever colour sits under them; 16-bit grayscale (I;16, I) is scaled 0..65535 -> 0..255 rather than
clipped; CMYK goes through Pillow's plain conversion (no colour profile). EXIF orientation is applied.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = ["IMAGE_EXTENSIONS", "SPECS", "ImageError", "ImageNotFoundError", "ImageSpec", "image_files", "load_image",
           "load_images", "preprocess", "spec_at"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ImageInput = str | os.PathLike | PIL.Image.Image | np.ndarray
_RESAMPLE = {"bicubic": PIL.Image.Resampling.BICUBIC, "bilinear": PIL.Image.Resampling.BILINEAR}


class ImageError(ValueError):
    """An image cannot be read or used; the message names the path (or input) and the fix."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The path does not exist (also a FileNotFoundError, for callers that catch that)."""


@dataclass(frozen=True)
class ImageSpec:
    size: int  # the square side the model takes
    resize: int | None  # shorter side before the centre crop; None: straight to size x size (aspect not kept)
    mean: tuple[float, ...]  # one value per channel, on the [0, 1] scale
    std: tuple[float, ...]
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    channels: int = 3  # 1 for grayscale models (a Fashion-MNIST ViT)

    def __post_init__(self) -> None:
        def bad(field: str, fix: str) -> ValueError:
            return ValueError(f"ImageSpec.{field}={getattr(self, field)!r}: {fix}")

        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise bad("size", "give the model's square input side as a positive int, e.g. size=224")
        if self.resize is not None and (isinstance(self.resize, bool) or not isinstance(self.resize, int)
                                        or self.resize < self.size):
            raise bad("resize", f"give an int >= size ({self.size}) for the shorter side before the crop, "
                                "or None to resize straight to size x size")
        if self.channels not in (1, 3):
            raise bad("channels", "use 3 for RGB models or 1 for grayscale models")
        if self.interpolation not in _RESAMPLE:
            raise bad("interpolation", f"use one of {sorted(_RESAMPLE)}")
        for field in ("mean", "std"):
            values = getattr(self, field)
            if isinstance(values, (int, float)) or len(values) != self.channels:
                raise bad(field, f"give one value per channel ({self.channels}), e.g. {field}="
                                 f"{(0.5,) * self.channels}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise bad(field, "every value must be a finite number on the [0, 1] pixel scale")
            object.__setattr__(self, field, tuple(float(v) for v in values))  # a list becomes a tuple
        if min(self.std) <= 0:
            raise bad("std", "every value must be > 0 (it divides)")


SPECS: dict[str, ImageSpec] = {
    # DINOv2 / ImageNet-trained ViTs: Resize(256, bicubic) + CenterCrop(224)
    "imagenet": ImageSpec(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"),
    # OpenAI CLIP: Resize(224, bicubic) on the shorter side + CenterCrop(224)
    "clip": ImageSpec(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                      "bicubic"),
    # Fashion-MNIST-style 28x28 grayscale, normalised to [-1, 1]
    "gray28": ImageSpec(28, None, (0.5,), (0.5,), "bilinear", channels=1),
}


def spec_at(name: str, size: int) -> ImageSpec:
    """The named spec at a model's input side: a model trained at another size keeps the spec's mean and std."""
    if name not in SPECS:
        raise ValueError(f"unknown image spec {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    if spec.size == size:
        return spec
    resize = None if spec.resize is None else round(spec.resize * size / spec.size)
    return dataclasses.replace(spec, size=size, resize=resize)


def _convert(img: PIL.Image.Image, channels: int) -> PIL.Image.Image:
    """Any Pillow mode -> RGB (channels=3) or L (channels=1)."""
    target = "RGB" if channels == 3 else "L"
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale: scale, Pillow would clip
        img = PIL.Image.fromarray((np.asarray(img).astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == target else img.convert(target)


def load_image(image: str | os.PathLike | PIL.Image.Image, channels: int = 3) -> PIL.Image.Image:
    """A file path or PIL image -> a loaded RGB (channels=3) or L (channels=1) PIL image; see the module doc."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r}: use 3 for RGB or 1 for grayscale")
    if isinstance(image, PIL.Image.Image):
        return _convert(PIL.ImageOps.exif_transpose(image), channels)
    path = Path(image)
    if not path.exists():
        raise ImageNotFoundError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise ImageError(f"{path} is a directory; pass an image file, or use load_images() for a directory")
    try:
        with PIL.Image.open(path) as img:
            img.load()
            img = PIL.ImageOps.exif_transpose(img)
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e}); check the file is a complete "
                         f"image in a format Pillow reads ({', '.join(IMAGE_EXTENSIONS)})") from e
    return _convert(img, channels)


def load_images(paths: str | os.PathLike | Iterable[str | os.PathLike], channels: int = 3) -> list[PIL.Image.Image]:
    """Load files; a directory stands for its image files (sorted by name, not recursive, hidden files skipped)."""
    return [load_image(f, channels) for f in image_files(paths)]


def image_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files load_images reads, in its order: a directory stands for its image files."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not found:
            raise ImageError(f"{path}: directory has no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                             "point at the folder that holds the images")
        files.extend(found)
    if not files:
        raise ImageError("no images given; pass a file, a directory or a list of files")
    return files


def _from_array(arr: np.ndarray, channels: int) -> PIL.Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(f"array of dtype {arr.dtype}: pass uint8 pixels 0..255 "
                         "(for floats in [0, 1]: (x * 255).round().astype(np.uint8))")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"array of shape {arr.shape}: pass (H, W) grayscale or (H, W, C) with C = 1, 3 or 4")
    return _convert(PIL.Image.fromarray(np.ascontiguousarray(arr)), channels)


def _resize_crop(img: PIL.Image.Image, spec: ImageSpec) -> PIL.Image.Image:
    """torchvision Resize(spec.resize) + CenterCrop(spec.size) on a PIL image."""
    w, h = img.size
    if spec.resize is None:
        new_w, new_h = spec.size, spec.size
    elif w <= h:
        new_w, new_h = spec.resize, int(spec.resize * h / w)
    else:
        new_w, new_h = int(spec.resize * w / h), spec.resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[spec.interpolation])
    top, left = int(round((new_h - spec.size) / 2.0)), int(round((new_w - spec.size) / 2.0))
    return img.crop((left, top, left + spec.size, top + spec.size))


def _at_size(batch: np.ndarray, spec: ImageSpec) -> bool:
    """A uint8 batch (N, size, size, 1 or C) that needs no resampling or mode change: preprocess skips PIL."""
    s = spec.size
    return (batch.ndim == 4 and batch.dtype == np.uint8 and batch.shape[1:3] == (s, s)
            and batch.shape[3] in (1, spec.channels) and spec.resize in (None, s))


def _normalise(batch: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """The per-image path's ops on the whole batch at once (60k Fashion-MNIST images: 0.3 s, not ~5 s), so the
    same floats; a gray batch broadcasts to RGB, as Pillow's L -> RGB replicates."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255)  # (N, 1 or C, s, s)
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)
    out = torch.empty(len(batch), spec.channels, spec.size, spec.size)
    return torch.sub(x, mean, out=out).div_(std)


def preprocess(images: ImageInput | Iterable[ImageInput], spec: ImageSpec | str) -> torch.Tensor:
    """One image or many (paths, directories, PIL images, uint8 arrays) -> float32 (B, C, size, size).

    `spec` is an ImageSpec or a name in SPECS. A single image gives B = 1; a 4-D uint8 array is a batch.
    """
    if isinstance(spec, str) and spec not in SPECS:
        raise ValueError(f"unknown image spec {spec!r}; known: {sorted(SPECS)}, or pass an ImageSpec")
    spec = SPECS[spec] if isinstance(spec, str) else spec
    if isinstance(images, np.ndarray) and _at_size(images, spec):
        return _normalise(images, spec)
    if isinstance(images, np.ndarray):
        items = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, (str, os.PathLike, PIL.Image.Image)):
        items = [images]
    else:
        items = list(images)
    pils: list[PIL.Image.Image] = []
    for item in items:
        if isinstance(item, np.ndarray):
            pils.append(_from_array(item, spec.channels))
        elif isinstance(item, PIL.Image.Image):
            pils.append(load_image(item, spec.channels))
        elif isinstance(item, (str, os.PathLike)):
            pils.extend(load_images(item, spec.channels))
        else:
            raise ImageError(f"cannot read an image from {type(item).__name__}; pass a path, PIL image or uint8 array")
    if not pils:
        raise ImageError("no images given; pass a file, a directory, a PIL image or a uint8 array")
    out = torch.empty(len(pils), spec.channels, spec.size, spec.size, dtype=torch.float32)
    mean, std = torch.tensor(spec.mean).view(-1, 1, 1), torch.tensor(spec.std).view(-1, 1, 1)
    for i, img in enumerate(pils):
        pixels = torch.from_numpy(np.array(_resize_crop(img, spec), dtype=np.uint8)).view(spec.size, spec.size, -1)
        out[i] = (pixels.permute(2, 0, 1).float().div(255) - mean) / std  # ToTensor, then Normalize
    return out
