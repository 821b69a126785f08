"""Turning a planned :class:`TrainingSample` into the pixel tensor the VAE encodes.

The geometry was fixed by :mod:`simpletuner.data.buckets`; this module only
carries it out (orient, convert to RGB, resize to ``intermediate_size``, crop
at ``crop_top_left``), so the pixels always match the micro-conditioning.

Odd modes are converted deliberately rather than left to PIL's defaults:
transparency is composited on white (PIL would drop alpha and expose
whatever colour the transparent pixels hold), and 16/32-bit greyscale is
scaled to 8 bits (PIL's plain conversion clips it to white).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from simpletuner.data.orientation import apply_orientation, header_orientation
from simpletuner.data.records import TrainingSample
from simpletuner.errors import DataError

_BACKGROUND = (255, 255, 255)


class ImageDecodeError(DataError):
    """An image passed discovery but its pixels cannot be decoded (e.g. a truncated file).

    Callers building a cache may catch it to skip the image and report it.
    """


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB version of ``image``, whatever its mode."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _wide_grey_to_rgb(image)
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit or float greyscale scaled into 0..255 (16-bit range assumed past 255)."""
    array = np.asarray(image, dtype=np.float64)
    peak = float(array.max()) if array.size else 0.0
    if image.mode == "F" and peak <= 1.0:
        array = array * 255.0
    elif peak > 255.0:
        array = array * (255.0 / 65535.0)
    grey = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8 2-D arrays become mode L


def load_image(sample: TrainingSample) -> Image.Image:
    """The sample's image resized and cropped to ``target_size``, as 8-bit RGB.

    An image in a bucket (the record's ``storage``) is downloaded whole into
    memory first; a missing object is handled like a missing file, while a
    storage failure the user must fix (credentials, network) stops the run.
    """
    record = sample.record
    try:
        source = record.path if record.storage is None else io.BytesIO(record.storage.read(record.path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                orientation = header_orientation(opened)
                opened.load()
                image = apply_orientation(opened, orientation)
                image = to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"dataset {sample.dataset_id!r}: image {sample.record.relative_path!r} cannot be decoded "
            f"({exc}); remove or replace the file"
        ) from None
    inter_h, inter_w = sample.intermediate_size
    if image.size != (inter_w, inter_h):
        image = image.resize((inter_w, inter_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    top, left = sample.crop_top_left
    target_h, target_w = sample.target_size
    if (top, left) != (0, 0) or image.size != (target_w, target_h):
        image = image.crop((left, top, left + target_w, top + target_h))
    return image


def load_pixels(sample: TrainingSample) -> torch.Tensor:
    """3 x H x W float32 tensor in [-1, 1] for the sample, H x W = ``target_size``."""
    image = load_image(sample)
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)
    return tensor.div_(127.5).sub_(1.0)
