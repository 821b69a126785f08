"""Checkpoints written by earlier versions, whose state parts are pickles (``*.pt``).

A pickle can run any code when loaded, so these are read with
``torch.load(weights_only=True)``: torch's restricted unpickler, which builds
tensors and plain containers and refuses every other callable.  The random
state file also holds numpy's generator state, an array; for that file alone
the three numpy globals an array needs are allowed, and the result must have
exactly the shape an MT19937 state has.  A file that needs anything more is
refused before any of it runs, with what to do instead.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simpletuner.errors import ConfigError

LEGACY_SUFFIX = ".pt"
RNG_PART = "rng_state"


def read_legacy_part(path: Path) -> Any:
    """The state pickled in ``path`` (``optimizer.pt``, ``rng_state.pt``, ...), loaded without running code."""
    is_rng = path.stem == RNG_PART
    try:
        with torch.serialization.safe_globals(_numpy_array_globals() if is_rng else []):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(_refusal(path, _refused_name(error))) from None
    except (OSError, EOFError, RuntimeError, ValueError) as error:
        raise ConfigError(f"{path}: cannot be read ({error}); the checkpoint is damaged") from None
    if is_rng:
        try:
            return {"per_rank": [_rng_state_from_legacy(rank) for rank in state["per_rank"]]}
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{path}: not a random-generator state ({error}); the checkpoint is damaged") from None
    return state


def _numpy_array_globals() -> list:
    """What pickle needs to rebuild one ndarray, under both numpy 1 and numpy 2 module names."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [
        np.ndarray, np.dtype,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        *[(dtype_class, f"numpy.dtypes.{dtype_class.__name__}") for dtype_class in _uint32_dtype_class()],
    ]


def _uint32_dtype_class() -> list:
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 may pickle the dtype's class too
    return [dtypes.UInt32DType] if dtypes is not None and hasattr(dtypes, "UInt32DType") else []


def _rng_state_from_legacy(state: dict[str, Any]) -> dict[str, Any]:
    """The old layout (random.getstate() and np.random.get_state() tuples) in today's plain form."""
    version, internal, gauss = state["python"]
    kind, keys, position, has_gauss, cached = state["numpy"]
    keys = np.asarray(keys)
    if kind != "MT19937" or keys.dtype != np.uint32 or keys.shape != (624,):
        raise ValueError("numpy state is not an MT19937 state")
    converted = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss},
        "numpy": {"bit_generator": kind, "keys": keys.tolist(), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"],
        "trainer_generator": state["trainer_generator"],
    }
    if "cuda" in state:
        converted["cuda"] = list(state["cuda"])
    return converted


def _refused_name(error: pickle.UnpicklingError) -> str:
    # torch's message names the refused callable: "... unsupported GLOBAL posix.system whose ..."
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else "something other than tensors and plain values"


def _refusal(path: Path, refused: str) -> str:
    return (
        f"{path}: refused: this pickle (the format of earlier SimpleTuner versions) would call {refused} "
        "when loaded, which can run any code. If you wrote it and trust it, finish that run with the "
        f"SimpleTuner version that wrote it; otherwise start a new run (the .safetensors weights in "
        f"{path.parent} are safe to load)"
    )
