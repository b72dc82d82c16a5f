"""Photos read as COLMAP reads them: 16-bit and float files scaled to 8 bit, EXIF orientation not applied."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.formats.photo import PhotoError, read_photo


def write_png16(path, pixels) -> None:
    """A 16-bit grey (H, W) or 48-bit RGB (H, W, 3) PNG; Pillow writes neither of the two."""
    pixels = np.asarray(pixels, dtype=">u2")
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\0" + pixels[row].tobytes() for row in range(height))  # filter 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def rgb8():
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path, rgb8):
    path = tmp_path / "grey16.png"
    write_png16(path, rgb8[..., 0].astype(np.uint16) * 257)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(read_photo(path), np.repeat(rgb8[..., :1], 3, axis=2))


def test_16_bit_grey_of_any_value_is_within_one_level(tmp_path):
    values = np.arange(0, 65536, 97, dtype=np.uint16)[None, :]
    path = tmp_path / "ramp.png"
    write_png16(path, values)
    got = read_photo(path)[0, :, 0].astype(np.float64)
    assert np.abs(got - values[0].astype(np.float64) * 255 / 65535).max() <= 0.5 + 1e-9


def test_48_bit_rgb_matches_its_8_bit_source(tmp_path, rgb8):
    path = tmp_path / "rgb48.png"
    write_png16(path, rgb8.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_photo(path), rgb8)
    # Pillow keeps the high byte of 16-bit RGB: off values land within one 8-bit level.
    write_png16(path, rgb8.astype(np.uint16) * 257 + 128)
    assert np.abs(read_photo(path).astype(int) - rgb8).max() <= 1


def test_float_photos_in_0_1_and_out_of_range(tmp_path, rgb8):
    path = tmp_path / "f.tif"
    Image.fromarray(rgb8[..., 0].astype(np.float32) / 255, mode="F").save(path)
    np.testing.assert_array_equal(read_photo(path)[..., 1], rgb8[..., 0])
    Image.fromarray(rgb8[..., 0].astype(np.float32), mode="F").save(path)  # 0..255 floats
    with pytest.raises(PhotoError, match=r"f\.tif: float image with values .*expected values in \[0, 1\]"):
        read_photo(path)


def test_exif_orientation_is_not_applied_but_warned(tmp_path, rgb8, caplog):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb8).save(path, exif=exif, quality=95)
    with caplog.at_level(logging.WARNING, logger="pipeline.formats.photo"):
        pixels = read_photo(path)
    assert pixels.shape == (5, 7, 3)  # the stored grid, as COLMAP's keypoints refer to it
    assert any("turned.jpg: EXIF orientation 6 ignored" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Image.fromarray(rgb8).save(path, quality=95)
    with caplog.at_level(logging.WARNING, logger="pipeline.formats.photo"):
        read_photo(path)
    assert not caplog.records


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.png: image not found"):
        read_photo(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(PhotoError, match=r"bad\.png: cannot read the image"):
        read_photo(tmp_path / "bad.png")
