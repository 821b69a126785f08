"""Training-state checkpoints that are either complete or absent.

A checkpoint is a folder ``checkpoint-<step>`` holding one file per part of
the state.  It is written under a hidden temporary name and renamed into
place only when every file is on disk, so ``latest`` always names a complete
checkpoint even if the process was killed while saving.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from simpletuner.storage.local import move_into_place

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"


def checkpoint_step(path: Path) -> Optional[int]:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def capture_rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a step draws from, as plain values and uint8 tensors (no pickle needed)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": kind, "keys": keys.tolist(), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "trainer_generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["bit_generator"], np.array(numpy["keys"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["trainer_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    write_parts: Callable[[Path], None],
    total_limit: Optional[int],
) -> Path:
    """Write a checkpoint atomically and prune old ones beyond ``total_limit``.

    ``write_parts(folder)`` writes the state files into ``folder``; if it
    fails (a full disk), the partial folder is removed at once.  Every
    step that removes or replaces a folder first renames it out of the way,
    so a kill at any instant leaves complete checkpoints plus hidden
    leftovers that :func:`remove_partial_checkpoints` cleans up or restores.
    """
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        write_parts(temporary)
        _fsync_folder(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    # Re-saving a step after a resume keeps the old copy until the new one is in place.
    move_into_place(temporary, final, output_dir / f".checkpoint-{step}.replaced")
    if total_limit:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            _delete_folder(old)
    return final


def _delete_folder(folder: Path) -> None:
    """Rename first, then delete: a half-deleted checkpoint never looks complete."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Clean up after saves or prunes that were interrupted.

    A ``.replaced`` copy whose successor never landed is put back; partial
    writes and half-deleted folders are removed.
    """
    if not output_dir.is_dir():
        return
    for replaced in output_dir.glob(".checkpoint-*.replaced"):
        final = output_dir / replaced.name[1:-len(".replaced")]
        if final.exists():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(replaced, final)
    for pattern in (".checkpoint-*.partial", ".checkpoint-*.deleting"):
        for leftover in output_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def publish(staging: Path, output_dir: Path) -> None:
    """Move everything in ``staging`` into ``output_dir``, entry by entry.

    Each entry is complete before it is moved, and an existing entry is
    renamed aside before its replacement lands, so a kill never leaves a
    truncated weights file where a user (or diffusers) would load it.
    """
    for entry in sorted(staging.iterdir()):
        target = output_dir / entry.name
        if target.exists():
            aside = output_dir / f".{entry.name}.old"
            _remove(aside)
            os.replace(target, aside)
            os.replace(entry, target)
            _remove(aside)
        else:
            os.replace(entry, target)
    staging.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
