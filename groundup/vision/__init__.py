"""Vision: image loading and the preprocessing that pretrained image encoders expect."""

from groundup.lazy import lazy_exports

__all__ = lazy_exports(__name__, {
    ".preprocess": "IMAGE_EXTENSIONS SPECS ImageError ImageNotFoundError ImageSpec load_image load_images preprocess",
})
