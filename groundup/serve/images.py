"""Images in chat requests: OpenAI `image_url` parts holding data: URLs (base64 PNG / JPEG / WebP ...), decoded
with Pillow. The server never fetches a remote URL (rule 12: nothing reaches the network at run time)."""

from __future__ import annotations

import base64
import binascii
import io

import PIL.Image

from ..vision.preprocess import ImageError, load_image
from .schema import RequestError

MAX_IMAGE_BYTES = 20 * 2 ** 20  # OpenAI's own limit per image


def decode_image_url(url: str, param: str) -> PIL.Image.Image:
    """A data: URL -> an RGB image; anything else is a RequestError naming `param`."""
    if not url.startswith("data:"):
        raise RequestError(f"{param}: only data: URLs are accepted (data:image/png;base64,...); this server does not "
                           "fetch images from the network", param)
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise RequestError(f"{param}: expected data:image/<format>;base64,<data>; got {header[:40]!r}", param)
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES:
        raise RequestError(f"{param}: the image is over {MAX_IMAGE_BYTES // 2 ** 20} MB; send a smaller one", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{param}: the base64 data does not decode; encode the image file with base64",
                           param) from None
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            img.load()
            return load_image(img.copy())
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, ImageError) as e:
        raise RequestError(f"{param}: the data is not an image Pillow reads ({type(e).__name__}); send a PNG or "
                           "JPEG", param) from None
