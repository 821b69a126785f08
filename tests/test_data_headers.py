"""The fast header parsers agree with PIL, and truncated files are caught at discovery."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from simpletuner.data import headers
from simpletuner.data.headers import UnreadableImage, read_image_size


def _noise(width, height, mode="RGB"):
    rng = np.random.default_rng(width + height)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4, "L": None}[mode]
    shape = (height, width, channels) if channels else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _pil_size(path):
    from PIL import ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize(
    "name, image, options",
    [
        ("rgb.jpg", _noise(70, 40), {}),
        ("grey.jpg", _noise(33, 65, "L"), {}),
        ("cmyk.jpg", _noise(50, 30, "CMYK"), {}),
        ("progressive.jpg", _noise(90, 20), {"progressive": True}),
        ("rotated6.jpg", _noise(80, 40), {"exif": _exif(6)}),
        ("rotated8.jpg", _noise(80, 40), {"exif": _exif(8)}),
        ("rotated3.jpg", _noise(80, 40), {"exif": _exif(3)}),
        ("with_icc.jpg", _noise(40, 30), {"icc_profile": b"\0" * 70000}),  # header past the first read
        ("rgb.png", _noise(70, 40), {}),
        ("rgba.png", _noise(21, 37, "RGBA"), {}),
        ("la.png", _noise(10, 12, "LA"), {}),
        ("rotated.png", _noise(80, 40), {"exif": _exif(6)}),
        ("interlaced.png", _noise(30, 31), {"optimize": False}),
        ("image.webp", _noise(45, 25), {"lossless": True}),
        ("image.bmp", _noise(45, 25), {}),
    ],
)
def test_sizes_match_pil_with_orientation(tmp_path, name, image, options):
    path = tmp_path / name
    image.save(path, **options)
    assert read_image_size(str(path)) == _pil_size(path)


def test_jpeg_and_png_take_the_fast_path(tmp_path, monkeypatch):
    _noise(40, 30).save(tmp_path / "a.jpg")
    _noise(40, 30).save(tmp_path / "a.png")

    def refuse(path):
        raise AssertionError("PIL was used for a plain JPEG/PNG")

    monkeypatch.setattr(headers, "_pil_header", refuse)
    monkeypatch.setattr(headers, "_decodes", refuse)
    assert read_image_size(str(tmp_path / "a.jpg")) == (40, 30)
    assert read_image_size(str(tmp_path / "a.png")) == (40, 30)


@pytest.mark.parametrize("fmt, options", [("JPEG", {}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                          ("BMP", {})])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_reported(tmp_path, fmt, options, keep):
    buffer = io.BytesIO()
    _noise(64, 64).save(buffer, fmt, **options)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnreadableImage) as info:
        read_image_size(str(path))
    assert info.value.reason == "truncated or corrupt"


def test_bytes_after_the_image_are_accepted_once_it_decodes(tmp_path, monkeypatch):
    """A motion photo: a video appended after the JPEG's end marker."""
    path = tmp_path / "motion.jpg"
    _noise(40, 30).save(path)
    with open(path, "ab") as handle:
        handle.write(b"ftypmp42" + b"\x01" * 5000)
    decodes = []
    real = headers._decodes
    monkeypatch.setattr(headers, "_decodes", lambda p: decodes.append(p) or real(p))
    assert read_image_size(str(path)) == (40, 30)
    assert decodes == [str(path)]  # the tail looked wrong, so it was decoded once to be sure


def test_bad_png_checksum_before_the_pixels_is_not_trusted(tmp_path):
    buffer = io.BytesIO()
    _noise(16, 16).save(buffer, "PNG", pnginfo=_text_info())
    data = bytearray(buffer.getvalue())
    index = data.index(b"tEXt")
    data[index + 6] ^= 0xFF  # corrupt the text chunk; its CRC no longer matches
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImage) as info:
        read_image_size(str(path))
    assert info.value.reason == "truncated or corrupt"


def _text_info():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello there")
    return info


def test_decompression_bomb_header(tmp_path):
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    with pytest.raises(UnreadableImage) as info:
        read_image_size(str(path))
    assert info.value.reason == "too large (decompression bomb guard)"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage) as info:
        read_image_size(str(tmp_path / "gone.png"))
    assert info.value.reason == "unreadable"
