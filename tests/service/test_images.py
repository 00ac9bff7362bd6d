"""Safe image decoding: limits are enforced before pixels are decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.errors import BadInputError
from service.errors import PayloadTooLargeError, UnsupportedMediaError
from service.images import decode_image
from tests.conftest import data_path

LIMITS = {"max_bytes": 4 * 1024 * 1024, "max_pixels": 16_000_000}


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG whose pixels are all zero: tiny file, enormous canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (width + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decodes_a_real_portrait_to_rgb() -> None:
    data = data_path("source", "az_detection1.jpg").read_bytes()
    rgb = decode_image(data, **LIMITS)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == (512, 512)
    assert rgb.flags.c_contiguous


def test_rgba_and_greyscale_become_rgb() -> None:
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 128))
    grey = Image.new("L", (40, 30), 77)
    assert decode_image(encode(rgba, "PNG"), **LIMITS).shape == (30, 40, 3)
    out = decode_image(encode(grey, "WEBP"), **LIMITS)
    assert out.shape == (30, 40, 3) and abs(int(out[0, 0, 0]) - 77) <= 2


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    rgb = decode_image(encode(image, "JPEG", exif=exif), **LIMITS)
    assert rgb.shape[:2] == (60, 20)


def test_large_images_are_downscaled() -> None:
    image = Image.new("RGB", (3000, 1500), (0, 90, 0))
    rgb = decode_image(encode(image, "JPEG"), **LIMITS, max_side=1024)
    assert rgb.shape == (512, 1024, 3)


def test_not_an_image_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_image(b"%PDF-1.7 definitely not a portrait" * 10, **LIMITS)


def test_formats_outside_the_allow_list_are_unsupported() -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_image(encode(Image.new("RGB", (8, 8)), "GIF"), **LIMITS)


def test_empty_upload_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        decode_image(b"", **LIMITS)


def test_too_many_bytes_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode_image(b"\xff" * (LIMITS["max_bytes"] + 1), **LIMITS)


def test_decompression_bomb_is_refused_unread() -> None:
    bomb = png_bomb(6000, 6000)  # 36 MP of zeros in a few tens of KiB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLargeError, match="pixels"):
        decode_image(bomb, **LIMITS)


def test_truncated_image_is_bad_input() -> None:
    data = data_path("source", "az_detection1.jpg").read_bytes()
    with pytest.raises(BadInputError) as info:
        decode_image(data[: len(data) // 3], **LIMITS)
    assert not isinstance(info.value, PayloadTooLargeError | UnsupportedMediaError)
