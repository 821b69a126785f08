"""--snr_gamma and --use_soft_min_snr weight the loss the trainer actually minimises.

tests/test_loss.py checks the weight formulas and tests/test_noise_options.py
that the objective hands them out; this checks the last link: the trainer's
own loss computation (``Trainer._loss``) on a real tiny model, for one batch
with fixed draws, equals the per-sample weighted mean.  The batch's
prediction, target and timesteps are observed at the model's and objective's
edges, and the weights are recomputed from the timesteps with the formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from family_harness import train_in_process, write_two_class_project
from simpletuner.training.loss import min_snr_weights, soft_min_snr_weights
from simpletuner.training.trainer import Trainer


def _observe_first_loss(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the loop by one call of the trainer's loss, watching its inputs."""
    seen: dict[str, Any] = {}

    def one_loss(self: Trainer, total_steps: int) -> None:
        samples = self.lookup.for_epoch(next(self.sampler.stream()), self.sampler.epoch)
        draw = self.objective.noise

        def watched_draw(latents: torch.Tensor, generator: torch.Generator) -> Any:
            seen["noised"] = draw(latents, generator)
            return seen["noised"]

        self.objective.noise = watched_draw
        hook = self.denoiser.register_forward_hook(lambda module, args, output: seen.__setitem__("output", output))
        with torch.no_grad():
            seen["loss"] = self._loss(samples).item()
        hook.remove()
        seen["prediction"] = self.family.prediction(seen["output"], seen["noised"].noisy)
        seen["scheduler"] = self.objective.scheduler

    monkeypatch.setattr(Trainer, "_train_until", one_loss)
    return seen


WEIGHTINGS: dict[str, tuple[list[str], Callable[[Any, torch.Tensor], torch.Tensor]]] = {
    "snr_gamma": (["--snr_gamma", "0.05"], lambda scheduler, t: min_snr_weights(scheduler, t, 0.05)),
    "soft_min_snr": (
        ["--use_soft_min_snr", "--soft_min_snr_sigma_data", "2"],
        lambda scheduler, t: soft_min_snr_weights(scheduler, t, 2.0),
    ),
}


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_the_trainers_loss_is_the_weighted_mean(
    weighting: str, tmp_path: Path, tiny_legacy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags, formula = WEIGHTINGS[weighting]
    seen = _observe_first_loss(monkeypatch)
    root = write_two_class_project(tmp_path, per_class=2)
    train_in_process(
        root, tiny_legacy, "legacy", "--model_type", "lora", "--train_batch_size", "4", "--max_train_steps", "1",
        *flags,
    )
    noised = seen["noised"]
    per_sample = (seen["prediction"].float() - noised.target.float()).pow(2).flatten(1).mean(1)
    weights = formula(seen["scheduler"], noised.timesteps).float()
    expected = (weights * per_sample).mean().item()
    unweighted = per_sample.mean().item()
    # The draw must be one where the weights matter, or the comparison proves nothing.
    assert abs(expected - unweighted) > 0.2 * unweighted, (weights, per_sample)
    assert seen["loss"] == pytest.approx(expected, rel=1e-5)
