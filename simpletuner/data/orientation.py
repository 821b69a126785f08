"""EXIF orientation, read the same way by discovery and by pixel loading.

Discovery records the size a person sees, and pixel loading must rotate the
image identically, or a sample's planned geometry would not match its pixels.
``ImageOps.exif_transpose`` may find an EXIF block that only appears after the
image data (PNG ``eXIf`` after ``IDAT``) once the image is decoded, which a
header-only read never sees; both stages therefore take the orientation from
the header here and apply it with :func:`apply_orientation`.
"""

from __future__ import annotations

from PIL import Image

ORIENTATION_TAG = 0x0112

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def header_orientation(image: Image.Image) -> int:
    """EXIF orientation (1-8) from an opened, not yet decoded image; 1 when absent or broken."""
    raw = image.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block must not cost the image
        return 1
    return value if value in _TRANSPOSE else 1


def swaps_axes(orientation: int) -> bool:
    """Orientations 5-8 rotate by 90 degrees, so width and height trade places."""
    return orientation in (5, 6, 7, 8)


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) as seen after applying ``orientation``."""
    return (height, width) if swaps_axes(orientation) else (width, height)


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Return ``image`` turned upright for ``orientation`` (the same object when 1)."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)
