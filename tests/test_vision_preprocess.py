"""Image loading and preprocessing: torchvision's Resize + CenterCrop rules, normalisation, modes, errors."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from groundup.vision import SPECS, ImageError, ImageSpec, load_image, load_images, preprocess

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def flat(size: int, resize: int | None, channels: int = 3) -> ImageSpec:
    """mean 0, std 1: the output is the pixel / 255, easy to check by hand."""
    return ImageSpec(size, resize, (0.0,) * channels, (1.0,) * channels, "bilinear", channels)


def solid(w: int, h: int, colour=RED, mode: str = "RGB") -> PIL.Image.Image:
    return PIL.Image.new(mode, (w, h), colour)


def test_shapes_and_dtype_for_every_input_kind(tmp_path):
    path = tmp_path / "a.png"
    solid(40, 30).save(path)
    gray = np.zeros((30, 40), np.uint8)
    rgb = np.zeros((30, 40, 3), np.uint8)
    cases = [(solid(40, 30), 1), (path, 1), (str(path), 1), (gray, 1), (rgb, 1), (rgb[:, :, :1], 1),
             ([path, solid(50, 60), gray, rgb], 4), (np.zeros((5, 30, 40, 3), np.uint8), 5), (tmp_path, 1)]
    for images, batch in cases:
        x = preprocess(images, "imagenet")
        assert x.shape == (batch, 3, 224, 224) and x.dtype == torch.float32
    assert preprocess(solid(40, 30), SPECS["clip"]).shape == (1, 3, 224, 224)
    assert preprocess(solid(40, 30), "gray28").shape == (1, 1, 28, 28)


def test_normalisation_matches_hand_computation_on_a_constant_image():
    x = preprocess(solid(300, 200, RED), "imagenet")
    expected = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    assert torch.allclose(x[0], expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-5)
    clip = SPECS["clip"]
    x = preprocess(solid(224, 224, (0, 255, 51)), clip)  # 51 / 255 = 0.2
    expected = [(0 - clip.mean[0]) / clip.std[0], (1 - clip.mean[1]) / clip.std[1], (0.2 - clip.mean[2]) / clip.std[2]]
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((224, 224), expected[c]), atol=1e-5)


def test_centre_crop_takes_the_middle_with_torchvisions_rounding():
    # 13 wide, 15 tall, crop 4 with no resize: top = round(5.5) = 6 (floor would give 5), left = round(4.5) = 4
    # (Python rounds half to even; rounding half up would give 5). Only the 4x4 square there is red.
    arr = np.zeros((15, 13, 3), np.uint8)
    arr[..., 2] = 255
    arr[6:10, 4:8] = RED
    x = preprocess(arr, flat(4, 13))
    assert torch.equal(x[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 4, 4))


def test_resize_keeps_the_aspect_ratio_of_a_300x200_image():
    # Thirds red | green | blue, 100 px each. Aspect kept: 150x100, crop columns 25..124, so the crop is
    # 25 red | 50 green | 25 blue; squashing to 100x100 would give thirds (column 29 red, column 70 blue).
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:, :100], arr[:, 100:200], arr[:, 200:] = RED, GREEN, BLUE
    x = preprocess(arr, flat(100, 100))[0]
    assert x.shape == (3, 100, 100)
    for col, colour in [(5, RED), (20, RED), (29, GREEN), (50, GREEN), (70, GREEN), (80, BLUE), (95, BLUE)]:
        assert torch.allclose(x[:, :, col], torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1), atol=0.02)
    portrait = preprocess(np.ascontiguousarray(arr.transpose(1, 0, 2)), flat(100, 100))[0]
    assert torch.allclose(portrait, x.transpose(1, 2), atol=1e-6)  # tall images take the same rule


def test_resize_sizes_and_interpolation_follow_torchvision(monkeypatch):
    calls = []
    original = PIL.Image.Image.resize

    def record(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, tuple(size), resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "resize", record)
    preprocess([solid(300, 200), solid(200, 301), solid(256, 400)], "imagenet")
    preprocess(solid(7, 3), ImageSpec(2, 2, (0.0,) * 3, (1.0,) * 3, "bilinear"))
    preprocess(solid(50, 20, 128, "L"), "gray28")
    bicubic, bilinear = PIL.Image.Resampling.BICUBIC, PIL.Image.Resampling.BILINEAR
    assert calls == [
        ((300, 200), (384, 256), bicubic),
        ((200, 301), (256, 385), bicubic),  # int(256 * 301 / 200) = int(385.28): truncated, as torchvision does
        # (256, 400) already has its shorter side at 256: no resampling at all
        ((7, 3), (4, 2), bilinear),  # int(2 * 7 / 3) = 4, not round(4.67) = 5
        ((50, 20), (28, 28), bilinear),  # resize=None: straight to size x size
    ]


def test_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:] = (255, 0, 0, 255)  # right half opaque red, left half fully transparent black
    rgba[0, 0] = (0, 0, 0, 128)  # half transparent black over white: 255 * 127 / 255 = 127
    x = preprocess(PIL.Image.fromarray(rgba, "RGBA"), flat(8, None))[0]
    assert torch.equal(x[:, 1:, :4], torch.ones(3, 7, 4))
    assert torch.equal(x[:, :, 4:], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 8, 4))
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 127 / 255), atol=1.5 / 255)
    assert torch.equal(preprocess(rgba, flat(8, None)), x[None])  # an RGBA array too
    la = PIL.Image.fromarray(np.zeros((8, 8, 2), np.uint8), "LA")  # transparent black
    assert torch.equal(preprocess(la, flat(8, None)), torch.ones(1, 3, 8, 8))
    p = PIL.Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert load_image(p, channels=1).getextrema() == (255, 255)
    assert torch.equal(preprocess(p, flat(8, None)), torch.ones(1, 3, 8, 8))


def test_grayscale_input_to_an_rgb_spec_gives_three_equal_channels():
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    x = preprocess(PIL.Image.fromarray(arr, "L"), flat(8, None))[0]
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(arr).float() / 255)


def test_one_channel_spec_gives_one_channel_of_luma():
    x = preprocess(solid(28, 28, RED), "gray28")  # Pillow's luma: 255 * 0.299 -> 76
    assert x.shape == (1, 1, 28, 28)
    assert torch.allclose(x, torch.full((1, 1, 28, 28), (76 / 255 - 0.5) / 0.5), atol=1e-6)
    assert load_image(solid(4, 4, RED), channels=1).mode == "L"
    assert load_image(solid(4, 4, mode="L", colour=9)).mode == "RGB"


def test_other_modes_convert(tmp_path):
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(path)  # 16-bit: scaled, not clipped
    assert PIL.Image.open(path).mode in ("I;16", "I")
    assert np.array(load_image(path, channels=1)).tolist() == [[0, 128, 255]]
    assert np.array(load_image(solid(2, 2, (0, 255, 255, 0), "CMYK"))).tolist() == [[list(RED)] * 2] * 2
    assert np.array(load_image(solid(2, 2, 1, "1"))).min() == 255
    wide = PIL.Image.new("RGB", (2, 4), RED)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    wide.save(tmp_path / "turned.png", exif=exif)
    assert load_image(tmp_path / "turned.png").size == (4, 2)


def test_bad_files_raise_image_error_naming_the_path(tmp_path):
    corrupt = tmp_path / "x.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.png"
    solid(64, 64).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    missing = tmp_path / "missing.jpg"
    for bad, call in [(corrupt, load_image), (text, load_image), (truncated, load_image), (missing, load_image),
                      (empty, load_image), (empty, load_images), (corrupt, lambda p: preprocess(p, "imagenet")),
                      (empty, lambda p: preprocess(p, "imagenet")), (missing, lambda p: preprocess([p], "clip"))]:
        with pytest.raises(ImageError) as info:
            call(bad)
        assert str(bad) in str(info.value)
        assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)
    with pytest.raises(ImageError, match="directory"):
        load_image(empty)


def test_load_images_expands_a_directory_sorted_and_filtered(tmp_path):
    for name, colour in [("b.JPG", GREEN), ("a.png", RED), ("c.webp", BLUE)]:
        solid(6, 6, colour).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("skip me")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble junk")  # hidden: skipped, not an error
    (tmp_path / "sub").mkdir()
    solid(6, 6).save(tmp_path / "sub" / "z.png")  # not recursive
    images = load_images(tmp_path)
    brightest = [int(np.argmax(img.getpixel((0, 0)))) for img in images]  # JPEG and WebP are lossy
    assert brightest == [0, 1, 2]  # a.png red, b.JPG green, c.webp blue
    assert len(load_images([tmp_path, tmp_path / "sub" / "z.png"])) == 4
    assert preprocess(tmp_path, flat(6, None)).shape == (3, 3, 6, 6)


def test_bad_arrays_and_inputs():
    with pytest.raises(ImageError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), "imagenet")
    with pytest.raises(ImageError, match=r"\(8, 8, 2\)"):
        preprocess(np.zeros((8, 8, 2), np.uint8), "imagenet")
    with pytest.raises(ImageError, match="no images"):
        preprocess([], "imagenet")
    with pytest.raises(ImageError, match="int"):
        preprocess([3], "imagenet")
    with pytest.raises(ValueError, match="known"):
        preprocess(solid(4, 4), "imagenette")


def test_named_specs():
    assert SPECS["imagenet"] == ImageSpec(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 3)
    assert SPECS["clip"] == ImageSpec(224, 224, (0.48145466, 0.4578275, 0.40821073),
                                      (0.26862954, 0.26130258, 0.27577711), "bicubic", 3)
    assert (SPECS["gray28"].size, SPECS["gray28"].resize, SPECS["gray28"].channels) == (28, None, 1)
    assert (SPECS["gray28"].mean, SPECS["gray28"].std) == ((0.5,), (0.5,))


@pytest.mark.parametrize("kwargs, field", [
    ({"size": 0}, "size"), ({"size": 2.5}, "size"), ({"resize": 100}, "resize"), ({"channels": 2}, "channels"),
    ({"interpolation": "nearest"}, "interpolation"), ({"mean": (0.5,)}, "mean"), ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"std": (0.2, 0.2)}, "std"), ({"mean": (0.5, float("nan"), 0.5)}, "mean"),
])
def test_spec_validation_names_the_field(kwargs, field):
    base = {"size": 224, "resize": 256, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"}
    with pytest.raises(ValueError, match=rf"ImageSpec\.{field}="):
        ImageSpec(**{**base, **kwargs})
    assert ImageSpec(**{**base, "mean": [0.1, 0.2, 0.3]}).mean == (0.1, 0.2, 0.3)  # a list is kept as a tuple
