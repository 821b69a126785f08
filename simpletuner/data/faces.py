"""Face positions for ``crop_style: face``: the crop window is centred on the largest face.

Detection uses OpenCV's frontal-face Haar cascade that ships with
``opencv-python-headless`` (``cv2.data.haarcascades``), on a greyscale copy
of the upright image at most 640 pixels across (JPEGs are decoded at reduced
size directly), so it costs a fraction of a full decode.  The result, the
centre of the largest face as fractions of the image's width and height, or
"no face", is saved per dataset in ``<cache_dir_vae>/faces.json`` keyed by
relative path with the file's size and mtime; only new or changed images are
examined again.  Images where no face is found are cropped in the centre.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

from PIL import Image
from tqdm import tqdm

from simpletuner.data.buckets import Focus
from simpletuner.data.orientation import apply_orientation, header_orientation
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig

logger = logging.getLogger(__name__)

FACES_FILE = "faces.json"
_VERSION = 1
_DETECT_SIZE = 640
_local = threading.local()


def _cascade():
    """One classifier per thread: cv2.CascadeClassifier is not safe to share across threads."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        import cv2

        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's face cascade {path} could not be loaded")
        _local.cascade = cascade
    return cascade


def detect_face(path: str, storage: Any = None) -> Optional[Focus]:
    """Centre (x, y) of the largest face in the upright image, as fractions; None when none is found.

    ``storage`` is the bucket ``path`` is a key in (None: a local file).
    """
    import cv2
    import numpy as np

    try:  # a storage failure (credentials, network) is not caught: it stops the run
        source = path if storage is None else io.BytesIO(storage.read(path))
    except FileNotFoundError:  # gone since discovery, like a deleted local file: loading reports it
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as image:
                orientation = header_orientation(image)
                image.draft("L", (_DETECT_SIZE, _DETECT_SIZE))  # JPEG: decode at 1/2, 1/4 or 1/8 size
                image = apply_orientation(image.convert("L"), orientation)
    except Exception:  # an image that cannot be decoded has no face to find; loading reports it later
        return None
    image.thumbnail((_DETECT_SIZE, _DETECT_SIZE))
    grey = cv2.equalizeHist(np.asarray(image, dtype=np.uint8))
    smaller = min(grey.shape)
    faces = _cascade().detectMultiScale(
        grey, scaleFactor=1.1, minNeighbors=5, minSize=(max(12, smaller // 20),) * 2
    )
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda box: (box[2] * box[3], -box[0], -box[1]))
    height, width = grey.shape
    return (float(x + w / 2) / width, float(y + h / 2) / height)


def face_focus(
    records: Sequence[ImageRecord], dataset: DatasetConfig, progress: bool = True, workers: Optional[int] = None
) -> Dict[str, Optional[Focus]]:
    """relative path -> face centre (or None) for every record, reusing saved results."""
    from simpletuner.storage.datasets import cache_of

    storage = cache_of(dataset)
    saved = _load(storage)
    result: Dict[str, Optional[Focus]] = {}
    todo: List[ImageRecord] = []
    for record in records:
        entry = saved.get(record.relative_path)
        if isinstance(entry, list) and entry[:2] == [record.size_bytes, record.mtime_ns]:
            result[record.relative_path] = (entry[2], entry[3]) if len(entry) == 4 else None
        else:
            todo.append(record)
    if todo:
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        bar = tqdm(total=len(todo), desc=f"finding faces in {dataset.id}", unit="img",
                   disable=not progress, leave=False)
        with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faces") as pool:
            for record, focus in zip(todo, pool.map(lambda r: detect_face(r.path, r.storage), todo)):
                result[record.relative_path] = focus
                bar.update(1)
        found = sum(result[r.relative_path] is not None for r in todo)
        logger.info("dataset %r: looked for faces in %d images, found %d (the rest are centre-cropped)",
                    dataset.id, len(todo), found)
    entries = {}
    for record in records:
        focus = result[record.relative_path]
        entries[record.relative_path] = [record.size_bytes, record.mtime_ns] + (list(focus) if focus else [])
    if todo or entries != saved:
        from simpletuner.storage.base import write_json

        write_json(storage, FACES_FILE, {"version": _VERSION, "files": entries})
    return result


def _load(storage: Any) -> dict:
    from simpletuner.storage.base import read_json

    try:
        data = read_json(storage, FACES_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]
