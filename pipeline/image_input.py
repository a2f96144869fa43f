"""Input images for inference: the formats an uploaded or given image may be, the pixel limit, and
the decoder that enforces both from the header, before any pixel is decompressed. Pillow alone: the
prepare stage reads the same formats without loading ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

# Decoders an input image may reach: plain raster formats only (Pillow hands EPS to Ghostscript, for one).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_PIXELS = 1024 * 1024  # a 64-channel layer of a 1024x1024 translation is already 256 MB


class ImageRejected(UserError, ValueError):
    """An input image that cannot be translated. `too_large`: refused for its size (the service
    answers 413), otherwise not a readable image (400)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def open_image(source: bytes | Path | str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file or in-memory bytes, refusing non-images and, from the header alone,
    before any pixel is decompressed, images over `max_pixels` (the decompression-bomb guard)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes | bytearray) and not source:
        raise ImageRejected("empty: no image data")
    fh = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        img = Image.open(fh, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(f"not a {', '.join(IMAGE_FORMATS)} image") from None
    except Image.DecompressionBombError as err:
        raise ImageRejected(str(err), too_large=True) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected(f"cannot decode image: {err}") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageRejected(f"{w}x{h} = {w * h} pixels > {max_pixels} (decompression-bomb guard)", too_large=True)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageRejected(f"cannot decode image: {err}") from None
    return img
