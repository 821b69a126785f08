"""The held-out evaluation loss: the training loss of images never trained on, at fixed noise.

At every evaluation each image of the held-out list is noised once per
quarter of the schedule with its fixed draw (:mod:`fixed_noise`), and the
family's objective gives the noisy input, target and weights exactly as in
training (``noised_at``).  The denoiser runs in eval mode without gradients;
the random state of the run is left as it was.  ``eval/loss`` is the mean
over images and ranges, ``eval/loss_tLLL-HHH`` the mean of one range.

With several processes image ``i`` is evaluated by rank ``i % processes``,
and the per-image losses are summed across ranks into a table in which every
other rank holds zero, so each entry arrives unchanged and every rank takes
the means in the same order: the figures equal a single process's.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

from simpletuner.errors import DataError
from simpletuner.evaluation.dataset import eval_dataset_id, eval_images
from simpletuner.evaluation.fixed_noise import RANGES, fixed_draw, range_names
from simpletuner.training.batches import collate, to_device
from simpletuner.training.loss import weighted_loss

logger = logging.getLogger(__name__)


class HeldOutEvaluator:
    """Computes and logs the held-out loss of ``samples`` (already capped to --num_eval_images)."""

    def __init__(self, samples: list, lookup: Any, family: Any, objective: Any, seed: int, accelerator: Any,
                 dtype: torch.dtype, batch_size: int) -> None:
        self.samples = samples
        self.lookup = lookup
        self.family = family
        self.objective = objective
        self.seed = seed
        self.accelerator = accelerator
        self.dtype = dtype
        self.batch_size = max(1, min(batch_size, RANGES))  # rows per forward pass, as in training
        self.names = [f"eval/loss_{name}" for name in range_names(objective.num_train_timesteps)]

    def evaluate(self, denoiser: torch.nn.Module) -> dict[str, float]:
        """``eval/loss`` and one ``eval/loss_tLLL-HHH`` per range (collective with several processes)."""
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        losses = torch.zeros(len(self.samples), RANGES, dtype=torch.float32, device=self.accelerator.device)
        was_training = denoiser.training
        denoiser.eval()
        try:
            with torch.no_grad(), _random_state_kept(self.accelerator.device):
                for index in range(rank, len(self.samples), processes):
                    losses[index] = self._image_losses(denoiser, index)
        finally:
            denoiser.train(was_training)
        if processes > 1:
            losses = self.accelerator.reduce(losses, reduction="sum")
        table = losses.double().cpu()
        values = {"eval/loss": table.mean().item()}
        values.update({name: table[:, r].mean().item() for r, name in enumerate(self.names)})
        return values

    def run(self, denoiser: torch.nn.Module, step: int) -> dict[str, float]:
        """Evaluate, log to the trackers at ``step`` and to the console; returns the values."""
        started = time.perf_counter()
        values = self.evaluate(denoiser)
        seconds = time.perf_counter() - started
        self.accelerator.log({**values, "eval/seconds": seconds}, step=step)
        if self.accelerator.is_main_process:
            ranges = ", ".join(f"{name.removeprefix('eval/loss_')} {values[name]:.5f}" for name in self.names)
            logger.info("step %d: eval loss %.5f (%s) over %d held-out images in %.1f s",
                        step, values["eval/loss"], ranges, len(self.samples), seconds)
        return values

    def _image_losses(self, denoiser: torch.nn.Module, index: int) -> torch.Tensor:
        """The loss of image ``index`` in each range, as training computes a sample's loss."""
        sample = self.samples[index]
        draw = fixed_draw(self.seed, index, tuple(self.lookup.latents(sample).shape))
        losses = []
        for start in range(0, RANGES, self.batch_size):
            rows = min(self.batch_size, RANGES - start)
            batch = to_device(collate([sample] * rows, self.lookup, self.family), self.accelerator.device, self.dtype)
            noised = self.objective.noised_at(batch["latents"], draw.noise[start:start + rows],
                                              draw.positions[start:start + rows])
            inputs = self.family.model_inputs(batch, noised.noisy, noised.timesteps)
            prediction = self.family.prediction(denoiser(**inputs), noised.noisy)
            for row in range(rows):
                weight = None if noised.weights is None else noised.weights[row:row + 1]
                huber_c = None if noised.huber_c is None else noised.huber_c[row:row + 1]
                # The run's --loss_type, so the figure is the loss training minimises.
                losses.append(weighted_loss(prediction[row:row + 1], noised.target[row:row + 1], weight,
                                            self.objective.loss_type, huber_c))
        return torch.stack(losses)


@contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Nothing inside may move the run's global random state (eval mode draws none; this makes sure)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def build_evaluator(config: Any, data: Any, lookup: Any, family: Any, objective: Any, seed: int,
                    accelerator: Any, dtype: torch.dtype) -> Optional[HeldOutEvaluator]:
    """The evaluator of --eval_dataset_id, or None when the run has no held-out dataset."""
    dataset_id = eval_dataset_id(config)
    if dataset_id is None:
        return None
    samples = eval_images(data.held_out[dataset_id], config.num_eval_images)
    if not samples:  # every image failed to decode while caching
        raise DataError(f"dataset {dataset_id!r} (--eval_dataset_id) has no image left to evaluate on: none "
                        "could be decoded (see the warnings above); replace them or name another dataset")
    if accelerator.is_main_process:
        logger.info("evaluation loss: %d image(s) of dataset %r, each at %d fixed timesteps, every %d steps "
                    "and before the first", len(samples), dataset_id, RANGES, config.validation_steps)
    return HeldOutEvaluator(samples, lookup, family, objective, seed, accelerator, dtype, config.train_batch_size)
