"""Where a validation's images go, and the grid and manifest beside them.

``output_dir/validation_images/step_{step:06d}/`` holds one PNG per image named
``{shortname}_{W}x{H}_seed{seed}_{index}.png``, ``grid.png`` (a row per prompt,
a column per resolution and image, the base model's benchmark images on the
left) and ``manifest.json`` listing every image.  The model card reads the
manifest, so its keys are a contract (documentation/VALIDATION.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from simpletuner.storage.local import move_into_place

VALIDATION_FOLDER = "validation_images"
MANIFEST = "manifest.json"
GRID = "grid.png"
# Blank space between grid cells, so neighbouring images stay apart.
GRID_GAP = 4


@dataclass
class RenderedImage:
    image: Any  # PIL.Image
    prompt: str
    shortname: str  # "-ema" appended for images of the EMA weights
    width: int
    height: int
    seed: int
    index: int
    weights: str = "trained"  # trained, ema or base (the benchmark)
    clip_score: Optional[float] = None

    @property
    def file(self) -> str:
        return f"{self.shortname}_{self.width}x{self.height}_seed{self.seed}_{self.index}.png"

    @property
    def row(self) -> str:
        """The grid row: the prompt's shortname, whichever weights drew it."""
        return self.shortname.removesuffix("-ema")

    def manifest_entry(self) -> dict[str, Any]:
        entry = {"file": self.file, "prompt": self.prompt, "shortname": self.shortname, "width": self.width,
                 "height": self.height, "seed": self.seed, "index": self.index, "weights": self.weights}
        if self.clip_score is not None:
            entry["clip_score"] = self.clip_score
        return entry


def step_folder(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / VALIDATION_FOLDER / f"step_{step:06d}"


def write_validation(output_dir: Path, step: int, images: list[RenderedImage],
                     benchmark: Optional[list[RenderedImage]] = None) -> Path:
    """Write the step's folder (replacing one left by an earlier run) and return it.

    Written beside the final name and renamed into place, so a folder under
    its final name is always complete.
    """
    folder = step_folder(output_dir, step)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for item in images:
        item.image.save(partial / item.file)
    make_grid(images, benchmark).save(partial / GRID)
    manifest = {"step": step, "images": [item.manifest_entry() for item in images], "grid": GRID}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    move_into_place(partial, folder, folder.with_name(folder.name + ".old"))
    return folder


def read_validation(output_dir: Path, step: int) -> Optional[list[RenderedImage]]:
    """The images a step's manifest lists, or None when there is no complete folder."""
    from PIL import Image

    folder = step_folder(output_dir, step)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        images = []
        for entry in manifest["images"]:
            with Image.open(folder / entry["file"]) as image:
                pixels = image.convert("RGB")
            images.append(RenderedImage(pixels, entry["prompt"], entry["shortname"], entry["width"],
                                        entry["height"], entry["seed"], entry["index"],
                                        entry.get("weights", "trained"), entry.get("clip_score")))
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return images


def make_grid(images: list[RenderedImage], benchmark: Optional[list[RenderedImage]] = None) -> Any:
    """One row per prompt; in each, that prompt's benchmark images, then its images, in order."""
    from PIL import Image

    rows: dict[str, list[RenderedImage]] = {}
    for item in images:
        rows.setdefault(item.row, [])
    for item in benchmark or []:
        if item.row in rows:
            rows[item.row].append(item)
    for item in images:
        rows[item.row].append(item)
    cell_w = max(item.image.width for row in rows.values() for item in row)
    cell_h = max(item.image.height for row in rows.values() for item in row)
    columns = max(len(row) for row in rows.values())
    grid = Image.new("RGB", (columns * (cell_w + GRID_GAP) - GRID_GAP, len(rows) * (cell_h + GRID_GAP) - GRID_GAP),
                     "white")
    for y, row in enumerate(rows.values()):
        for x, item in enumerate(row):
            grid.paste(item.image, (x * (cell_w + GRID_GAP), y * (cell_h + GRID_GAP)))
    return grid
