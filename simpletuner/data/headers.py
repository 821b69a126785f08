"""Image sizes from file headers, plus a cheap check that the file is complete.

Discovery reads every image of a dataset once, so this is its hot path.  For
the two formats nearly every dataset is made of, JPEG and PNG, the header is
parsed here directly from the file's first bytes (one read for a small file):
width, height, and the EXIF orientation that decides which way up the image
is seen.  Anything else, or anything these parsers are not sure about, goes
through ``PIL.Image.open``, which also parses only the header.

A truncated file has an intact header, so a header alone cannot tell it is
broken.  Each format has a cheap sign of completeness, though: a JPEG ends
with the EOI marker ``FF D9``, a PNG with its ``IEND`` chunk, a WebP's RIFF
header and a BMP's file header state the file's length.  When that sign is
missing (a truncated download, or legitimately extra bytes such as a motion
photo's video after the JPEG), the image is fully decoded once to decide; a
file that does not decode is reported as truncated or corrupt.  Discovery
caches the verdict, so this costs one decode per odd file, once.

Pixel loading (:mod:`simpletuner.data.transforms`) applies the same
orientation rule (EXIF found before the image data), so planned geometry
and pixels agree.

Objects in a bucket (:func:`read_stored_image_size`) go through the same
parsers with ranged reads: the first 64 KiB, then only what the header
needs and the few tail bytes of the completeness check.  The whole object
is downloaded only when PIL has to decide (the odd files above).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

from PIL import Image, UnidentifiedImageError

from simpletuner.data.orientation import header_orientation, upright_size

if TYPE_CHECKING:
    from simpletuner.storage.base import Storage

REASON_NOT_IMAGE = "not an image"
REASON_UNREADABLE = "unreadable"
REASON_TOO_LARGE = "too large (decompression bomb guard)"
REASON_CORRUPT = "truncated or corrupt"

_FIRST_READ = 16384  # a small image whole, and the header of most others
_FIRST_REQUEST = 65536  # per request, 64 KiB costs about what 16 KiB does; EXIF thumbnails fit
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# SOF markers carry the frame size: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_ORIENTATION_TAG = 0x0112


class UnreadableImage(Exception):
    """A header reader could not get a size; ``reason`` goes to the skip summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Buffer:
    """The file's leading bytes, extended on demand (raw ``os`` calls: this is the hot path)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = os.read(fd, _FIRST_READ)
        self.complete = len(self.data) < _FIRST_READ

    def ensure(self, end: int) -> bool:
        """Make ``data`` hold at least ``end`` bytes; False at end of file."""
        while len(self.data) < end and not self.complete:
            wanted = max(_FIRST_READ, end - len(self.data))
            more = os.read(self.fd, wanted)
            self.data += more
            self.complete = len(more) < wanted
        return len(self.data) >= end

    def tail(self, count: int) -> bytes:
        if self.complete:
            return self.data[-count:]
        os.lseek(self.fd, -count, os.SEEK_END)
        return os.read(self.fd, count)

    def file_size(self) -> int:
        return len(self.data) if self.complete else os.fstat(self.fd).st_size


class _StoredBuffer:
    """The same interface as :class:`_Buffer`, over ranged reads of a stored object."""

    def __init__(self, storage: "Storage", name: str) -> None:
        self.storage, self.name = storage, name
        self.data, self.size = storage.read_head(name, _FIRST_REQUEST)
        self.complete = len(self.data) >= self.size

    def ensure(self, end: int) -> bool:
        while len(self.data) < end and not self.complete:
            start = len(self.data)
            more = self.storage.read_range(self.name, start, start + max(_FIRST_REQUEST, end - start))
            self.data += more
            self.complete = not more or len(self.data) >= self.size
        return len(self.data) >= end

    def tail(self, count: int) -> bytes:
        if self.complete:
            return self.data[-count:]
        return self.storage.read_range(self.name, max(0, self.size - count), self.size)

    def file_size(self) -> int:
        return self.size


class _WholeObject:
    """The object's bytes, downloaded on first use, for PIL to open as often as it needs."""

    def __init__(self, storage: "Storage", name: str) -> None:
        self.storage, self.name = storage, name
        self.data: Optional[bytes] = None

    def open(self) -> io.BytesIO:
        if self.data is None:
            self.data = self.storage.read(self.name)
        return io.BytesIO(self.data)


Source = Callable[[], Union[str, io.BytesIO]]  # what PIL opens: a path, or a fresh in-memory copy


def _tiff_orientation(block: bytes) -> int:
    """EXIF orientation from a TIFF block (optionally prefixed by ``Exif\\0\\0``); 1 when absent."""
    if block.startswith(b"Exif\x00\x00"):
        block = block[6:]
    if block[:2] == b"II":
        order = "<"
    elif block[:2] == b"MM":
        order = ">"
    else:
        return 1
    try:
        (offset,) = struct.unpack_from(order + "I", block, 4)
        (count,) = struct.unpack_from(order + "H", block, offset)
        for index in range(count):
            tag, kind = struct.unpack_from(order + "HH", block, offset + 2 + 12 * index)
            if tag == _ORIENTATION_TAG:
                if kind != 3:  # SHORT
                    return 1
                (value,) = struct.unpack_from(order + "H", block, offset + 2 + 12 * index + 8)
                return value if 2 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _png_header(buffer: _Buffer) -> Optional[Tuple[int, int, int]]:
    """(width, height, orientation) of a well-formed PNG, or None to let PIL decide."""
    data = buffer.data
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    orientation = 1
    position = 8
    while True:
        if not buffer.ensure(position + 8):
            return None
        length, kind = struct.unpack_from(">I4s", buffer.data, position)
        if kind in (b"IDAT", b"IEND"):
            return width, height, orientation
        end = position + 12 + length
        if length > 1 << 26 or not buffer.ensure(end):
            return None
        chunk = buffer.data[position + 4 : end - 4]
        (crc,) = struct.unpack_from(">I", buffer.data, end - 4)
        if zlib.crc32(chunk) != crc:  # PIL refuses a bad checksum here, so must we
            return None
        if kind == b"eXIf":
            orientation = _tiff_orientation(chunk[4:])
        position = end


def _jpeg_header(buffer: _Buffer) -> Optional[Tuple[int, int, int]]:
    """(width, height, orientation) of an 8-bit JPEG PIL can decode, or None to let PIL decide."""
    orientation = 1
    seen_exif = False
    position = 2
    while True:
        if not buffer.ensure(position + 4):
            return None
        data = buffer.data
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or scan data before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if not buffer.ensure(position + 10):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", buffer.data, position + 4)
            if precision != 8 or components not in (1, 3, 4) or not width or not height:
                return None
            return width, height, orientation
        if marker == 0xE1 and not seen_exif:
            if not buffer.ensure(position + 2 + length):
                return None
            segment = buffer.data[position + 4 : position + 2 + length]
            if segment.startswith(b"Exif\x00\x00"):
                seen_exif = True  # PIL keeps the first Exif segment; so do we
                orientation = _tiff_orientation(segment)
        position += 2 + length


def _looks_complete(kind: str, buffer: _Buffer, file_size: int) -> bool:
    """The format's own cheap sign that the file was not cut short."""
    if kind == "JPEG":
        return buffer.tail(64).rstrip(b"\x00\r\n\t ").endswith(_JPEG_EOI)
    if kind == "PNG":
        return _PNG_END in buffer.tail(32)
    data = buffer.data
    if kind == "WEBP" and len(data) >= 8:
        (riff_size,) = struct.unpack_from("<I", data, 4)
        return riff_size + 8 <= file_size
    if kind == "BMP" and len(data) >= 6:
        (declared,) = struct.unpack_from("<I", data, 2)
        return 0 < declared <= file_size
    return False  # other formats: decode to be sure


def _decodes(target: Union[str, io.BytesIO]) -> bool:
    """Whether the whole image decodes (the slow, certain check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(target) as image:
                image.load()
        return True
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... for damaged data
        return False


def _signature(head: bytes) -> str:
    """The format a file's first bytes announce (for WebP and BMP; JPEG/PNG are checked earlier)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    return ""


def _check_pixels_limit(width: int, height: int) -> None:
    """PIL's decompression bomb guard, applied to sizes we parsed ourselves."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise UnreadableImage(REASON_TOO_LARGE)


def _pil_header(target: Union[str, io.BytesIO]) -> Tuple[int, int, int, str]:
    """(width, height, orientation, format) from PIL's header parser."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(target) as image:
                width, height = image.size
                return width, height, header_orientation(image), image.format or ""
    except Image.DecompressionBombError:
        raise UnreadableImage(REASON_TOO_LARGE) from None
    except UnidentifiedImageError:
        raise UnreadableImage(REASON_NOT_IMAGE) from None
    except Exception:  # PIL raises OSError, SyntaxError, struct.error... for broken headers
        raise UnreadableImage(REASON_CORRUPT) from None


def read_image_size(path: str) -> Tuple[int, int]:
    """(width, height) of the image at ``path`` as seen upright, checked for completeness.

    Raises :class:`UnreadableImage` for anything that is not a complete,
    decodable image (see the module notes for what is checked when).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        raise UnreadableImage(REASON_UNREADABLE) from None
    source = lambda: path  # noqa: E731 - PIL opens the file itself
    try:
        width, height, orientation, complete = _parse(_Buffer(fd), source)
    except OSError:
        raise UnreadableImage(REASON_UNREADABLE) from None
    finally:
        os.close(fd)
    return _checked(width, height, orientation, complete, source)


def read_stored_image_size(storage: "Storage", name: str) -> Tuple[int, int]:
    """:func:`read_image_size` for an object in ``storage`` (an S3 bucket), by ranged reads.

    A missing object is unreadable; failures the user must fix (credentials,
    network) raise the storage's own error and stop discovery.
    """
    whole = _WholeObject(storage, name)
    try:
        width, height, orientation, complete = _parse(_StoredBuffer(storage, name), whole.open)
        return _checked(width, height, orientation, complete, whole.open)
    except OSError:  # FileNotFoundError: the object went away since it was listed
        raise UnreadableImage(REASON_UNREADABLE) from None


def _parse(buffer: "Union[_Buffer, _StoredBuffer]", source: Source) -> Tuple[int, int, int, bool]:
    """(width, height, orientation, looks complete) from the leading bytes, PIL deciding odd files."""
    parsed, kind = None, ""
    if buffer.data.startswith(_PNG_SIGNATURE):
        parsed, kind = _png_header(buffer), "PNG"
    elif buffer.data.startswith(b"\xff\xd8\xff"):
        parsed, kind = _jpeg_header(buffer), "JPEG"
    if parsed is None:  # not JPEG/PNG, or one our parsers were unsure of: PIL decides
        signed = kind or _signature(buffer.data)
        try:
            # source() runs first: a failed download must not read as a corrupt image
            width, height, orientation, kind = _pil_header(source())
        except UnreadableImage as bad:
            if signed and bad.reason == REASON_NOT_IMAGE:  # looks like an image, yet PIL gives up
                raise UnreadableImage(REASON_CORRUPT) from None
            raise
        trusted = kind in ("WEBP", "BMP")  # odd JPEGs and PNGs are decoded to be sure
    else:
        width, height, orientation = parsed
        _check_pixels_limit(width, height)
        trusted = True
    return width, height, orientation, trusted and _looks_complete(kind, buffer, buffer.file_size())


def _checked(width: int, height: int, orientation: int, complete: bool, source: Source) -> Tuple[int, int]:
    if width <= 0 or height <= 0:
        raise UnreadableImage(REASON_UNREADABLE)
    if not complete and not _decodes(source()):
        raise UnreadableImage(REASON_CORRUPT)
    return upright_size(width, height, orientation)
