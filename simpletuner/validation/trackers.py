"""Validation images and scalars into every tracker in ``--report_to``.

TensorBoard gets one image series per prompt and size plus the grid; wandb a
gallery panel per prompt, or one table (``--tracker_image_layout table``);
comet_ml every image file.  Each tracker is read back by the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simpletuner.training.setup import tracker_names
from simpletuner.validation.layout import RenderedImage


def send_images(accelerator: Any, config: Any, step: int, images: list[RenderedImage], grid: Any) -> None:
    names = tracker_names(config)
    if "tensorboard" in names:
        _tensorboard(accelerator.get_tracker("tensorboard"), step, images, grid)
    if "wandb" in names:
        _wandb(accelerator.get_tracker("wandb"), config.tracker_image_layout, step, images, grid)
    if "comet_ml" in names:
        experiment = accelerator.get_tracker("comet_ml", unwrap=True)
        for item in images:
            experiment.log_image(item.image, name=item.file, step=step)
        experiment.log_image(grid, name=f"grid_step{step}.png", step=step)


def _tensorboard(tracker: Any, step: int, images: list[RenderedImage], grid: Any) -> None:
    series: dict[str, list[np.ndarray]] = {}
    for item in images:
        series.setdefault(f"validation/{item.shortname}_{item.width}x{item.height}", []).append(np.asarray(item.image))
    series["validation/grid"] = [np.asarray(grid)]
    tracker.log_images({tag: np.stack(arrays) for tag, arrays in series.items()}, step=step, dataformats="NHWC")


def _wandb(tracker: Any, layout: str, step: int, images: list[RenderedImage], grid: Any) -> None:
    import wandb

    def caption(item: RenderedImage) -> str:
        return f"{item.prompt or '(empty prompt)'} | {item.width}x{item.height} seed {item.seed}"

    if layout == "table":
        rows = [[item.shortname, item.prompt, f"{item.width}x{item.height}", item.seed, item.index,
                 wandb.Image(item.image)] for item in images]
        tracker.log_table("validation/images", columns=["shortname", "prompt", "resolution", "seed", "index",
                                                         "image"], data=rows, step=step)
        return
    panels: dict[str, list[Any]] = {}
    for item in images:
        panels.setdefault(f"validation/{item.shortname}", []).append(wandb.Image(item.image, caption=caption(item)))
    panels["validation/grid"] = [wandb.Image(grid)]
    tracker.log(panels, step=step)
