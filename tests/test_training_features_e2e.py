"""One short Flux LoRA run that uses several of SimpleTuner's training features at
once (issue 16), observed at the trainer's edges: the Huber loss it minimises,
the Beta-drawn sigmas, random-range guidance reaching the transformer, the
context+ffs LoRA layers saved, value clipping, gradients set to None, and an
unpruned bucket giving an extra batch.  The math of each is in
tests/test_training_features.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import simpletuner.training.trainer as trainer_module
from family_harness import write_two_class_project
from simpletuner.training.loss import per_sample_loss, scheduled_huber_c
from simpletuner.training.trainer import Trainer

CLIP = 1e-4


def _watch(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {"steps": [], "clipped": []}
    loss = Trainer._loss

    def watched_loss(self: Trainer, samples: list) -> torch.Tensor:
        step: dict[str, Any] = {}
        draw = self.objective.noise

        def watched_draw(latents: torch.Tensor, generator: torch.Generator) -> Any:
            step["noised"] = draw(latents, generator)
            return step["noised"]

        def inputs_and_output(module: Any, args: Any, kwargs: dict, output: Any) -> None:
            step["guidance"] = kwargs["guidance"].detach().clone()
            step["prediction"] = self.family.prediction(output, step["noised"].noisy).detach()

        self.objective.noise = watched_draw
        hook = self.denoiser.register_forward_hook(inputs_and_output, with_kwargs=True)
        try:
            step["loss"] = loss(self, samples)
        finally:
            hook.remove()
            del self.objective.noise
        seen["steps"].append(step)
        seen["trainer"] = self
        return step["loss"]

    clip = trainer_module.clip_gradients

    def watched_clip(accelerator: Any, parameters: Any, method: str, limit: float) -> Any:
        result = clip(accelerator, parameters, method, limit)
        grads = torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])
        seen["clipped"].append((grads.abs().max().item(), grads.norm().item()))
        return result

    monkeypatch.setattr(Trainer, "_loss", watched_loss)
    monkeypatch.setattr(trainer_module, "clip_gradients", watched_clip)
    return seen


@pytest.mark.slow
def test_a_flux_run_uses_the_simpletuner_features(
    tmp_path: Path, tiny_flux: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from family_harness import train_in_process

    seen = _watch(monkeypatch)
    # 3 + 3 images in one bucket, batches of 4: one batch pruned, two without pruning.
    root = write_two_class_project(tmp_path, per_class=3)
    output = train_in_process(
        root, tiny_flux, "flux", "--model_type", "lora", "--train_batch_size", "4", "--max_train_steps", "2",
        "--loss_type", "huber", "--huber_schedule", "snr", "--huber_c", "0.3",
        "--flux_use_beta_schedule", "--flux_beta_schedule_alpha", "8", "--flux_beta_schedule_beta", "1",
        "--flux_guidance_mode", "random-range", "--flux_guidance_min", "2", "--flux_guidance_max", "6",
        "--flux_lora_target", "context+ffs", "--grad_clip_method", "value", "--max_grad_norm", str(CLIP),
        "--set_grads_to_none", "--disable_bucket_pruning",
    )
    trainer = seen["trainer"]
    assert trainer.sampler.batches_per_epoch() == 2  # the leftover 2 images filled up to a batch

    for step in seen["steps"]:
        noised = step["noised"]
        sigmas = noised.timesteps / 1000
        # Beta(8, 1) puts nearly all mass above 0.5; a uniform or logit-normal draw would not, four times.
        assert (sigmas > 0.5).all(), sigmas
        ratio = sigmas / (1 - sigmas)
        c = scheduled_huber_c("snr", 0.3, noised.timesteps, 1000, ratio)
        assert torch.allclose(noised.huber_c, c)
        expected = per_sample_loss(step["prediction"], noised.target, "huber", c).mean().item()
        squared = per_sample_loss(step["prediction"], noised.target, "l2").mean().item()
        assert step["loss"].item() == pytest.approx(expected, rel=1e-4)
        assert abs(expected - squared) > 0.1 * squared
        guidance = step["guidance"]
        assert ((guidance >= 2) & (guidance <= 6)).all() and guidance.unique().numel() == len(guidance)

    # Value clipping: elements clamped to the limit, while their overall norm stays above it
    # (clipping by norm would have brought the norm down to the limit).
    assert len(seen["clipped"]) == 2
    for largest, norm in seen["clipped"]:
        assert largest == pytest.approx(CLIP) and norm > 2 * CLIP
    # --set_grads_to_none: freed after the last step, not zero-filled.
    assert all(p.grad is None for p in trainer.trained_parameters)

    saved = load_file(str(output / "pytorch_lora_weights.safetensors"))
    layers = {key.split(".lora_")[0].removeprefix("transformer.") for key in saved}
    assert any("ff_context.net.2" in layer for layer in layers)
    assert any("attn.add_q_proj" in layer for layer in layers)
    assert not any(layer.endswith(("attn.to_q", "ff.net.2")) for layer in layers), sorted(layers)
