"""Cache keys: a hash of everything that shaped an entry.

If any ingredient changes (the source file's size or mtime, the crop box, the
target size, the encoder's identity or the latent normalisation, the caption
text), the key changes and the old entry is simply not found.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from simpletuner.data.records import TrainingSample


def _digest(parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:40]


def latent_key(sample: TrainingSample, vae_identity: str, normalisation: str) -> str:
    record = sample.record
    return _digest(
        {
            "file": [record.relative_path, record.size_bytes, record.mtime_ns],
            "resize": list(sample.intermediate_size),
            "crop": list(sample.crop_top_left),
            "target": list(sample.target_size),
            "vae": vae_identity,
            "norm": normalisation,
        }
    )


def latent_sample_seed(sample: TrainingSample) -> int:
    """Seed for sampling this entry's VAE posterior.

    It depends on what the image is and how it is cut, not on when the file
    was written, so re-encoding a touched or copied file gives the same latent.
    """
    digest = _digest(
        {"file": sample.record.relative_path, "resize": list(sample.intermediate_size),
         "crop": list(sample.crop_top_left), "target": list(sample.target_size)}
    )
    return int(digest[:15], 16)


def text_key(caption: str, encoder_identity: str) -> str:
    return _digest({"caption": caption, "encoders": encoder_identity})
