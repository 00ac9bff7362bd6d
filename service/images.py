"""Safe decoding of uploaded portraits.

An upload is untrusted: it may be huge, not an image, truncated, or a decompression bomb (a
small file declaring a gigantic canvas).  Every check that can be made before decoding pixels
is made first; the declared size is checked against a pixel cap before anything is allocated.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import BadInputError
from service.errors import PayloadTooLargeError, UnsupportedMediaError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None
) -> np.ndarray:
    """An upload -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied).

    Raises PayloadTooLargeError (bytes or declared pixels over the caps), UnsupportedMediaError
    (not an allowed image format), BadInputError (corrupt or truncated).  Images larger than
    ``max_side`` are downscaled (aspect kept): no portrait needs more, and the face detector is
    faster on small images.
    """
    if not data:
        raise BadInputError("empty upload")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"upload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        # Only the header is parsed here: no pixel is decoded before the size check below.
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow refuses a canvas over twice its own limit already while reading the header.
        raise PayloadTooLargeError(f"image refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise UnsupportedMediaError(
            f"not a supported image (allowed: {', '.join(ALLOWED_FORMATS)})"
        ) from e
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadInputError("image has no pixels")
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below its hard limit; treat the warning as refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            upright = ImageOps.exif_transpose(image)
            if max_side is not None and max(upright.size) > max_side:
                upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            rgb = np.asarray(upright.convert("RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise PayloadTooLargeError(f"image refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError.
        raise BadInputError(f"corrupt image: {e}") from e
    return np.ascontiguousarray(rgb, dtype=np.uint8)
