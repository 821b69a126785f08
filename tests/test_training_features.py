"""SimpleTuner's training features (issue 16), each on its own math or selection:
--loss_type with the Huber schedules, --snr_weight, --grad_clip_method,
--disable_bucket_pruning, the flow sigma draws, Flux's guidance modes and
LoRA target presets, fp16's device rule, TF32, threads and per-process seeds.

tests/test_training_features_e2e.py checks that a real run uses them.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from simpletuner.config.options import OPTIONS_BY_NAME
from simpletuner.training.loss import per_sample_loss, scheduled_huber_c, weighted_loss


def _config(**values):
    """Every option at its default, with ``values`` on top (what load_config would give)."""
    defaults = {name: option.default for name, option in OPTIONS_BY_NAME.items()}
    return SimpleNamespace(**{**defaults, **values})


# ------------------------------------------------------------------- loss types


def _diffusers_conditional_loss(prediction, target, loss_type, huber_c):
    """diffusers' train_text_to_image scripts' ``conditional_loss`` (reduction none), written out."""
    if loss_type == "huber":
        return 2 * huber_c * (torch.sqrt((prediction - target) ** 2 + huber_c**2) - huber_c)
    return 2 * (torch.sqrt((prediction - target) ** 2 + huber_c**2) - huber_c)


@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_pseudo_huber_losses_match_diffusers_and_differ_from_l2(loss_type: str) -> None:
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(3, 4, 8, 8, generator=generator) * 3, torch.randn(3, 4, 8, 8, generator=generator)
    c = torch.tensor([0.1, 0.5, 1.0])
    ours = per_sample_loss(prediction, target, loss_type, c)
    for i in range(3):
        expected = _diffusers_conditional_loss(prediction[i], target[i], loss_type, c[i].item()).mean().item()
        assert ours[i].item() == pytest.approx(expected, rel=1e-5)
    l2 = per_sample_loss(prediction, target, "l2")
    assert not torch.allclose(ours, l2, rtol=0.1)


def test_huber_grows_linearly_where_l2_grows_quadratically() -> None:
    target = torch.zeros(1, 1, 1, 1)
    c = torch.tensor([0.1])
    small, large = [per_sample_loss(torch.full_like(target, e), target, "huber", c).item() for e in (10.0, 20.0)]
    assert large / small == pytest.approx(2.0, rel=0.02)  # l2 would be 4


def test_huber_c_schedules_follow_the_timestep() -> None:
    timesteps = torch.tensor([0, 500, 1000])
    ratio = torch.tensor([0.0, 1.0, 1e6])
    constant = scheduled_huber_c("constant", 0.1, timesteps, 1000, ratio)
    assert constant.tolist() == pytest.approx([0.1, 0.1, 0.1])
    # diffusers' scripts: alpha = -ln(c) / T, c(t) = exp(-alpha t): 1 at t=0, c at t=T.
    exponential = scheduled_huber_c("exponential", 0.1, timesteps, 1000, ratio)
    assert exponential.tolist() == pytest.approx([1.0, math.sqrt(0.1), 0.1], rel=1e-5)
    # (1 - c) / (1 + sigma)^2 + c: 1 for a clean input, c for pure noise.
    snr = scheduled_huber_c("snr", 0.1, timesteps, 1000, ratio)
    assert snr.tolist() == pytest.approx([1.0, 0.9 / 4 + 0.1, 0.1], rel=1e-4)


def test_weighted_loss_applies_type_and_weights() -> None:
    prediction, target = torch.full((2, 1, 2, 2), 5.0), torch.zeros(2, 1, 2, 2)
    c = torch.tensor([1.0, 1.0])
    per_sample = 2 * (math.sqrt(26) - 1)
    assert weighted_loss(prediction, target, torch.tensor([1.0, 0.0]), "huber", c).item() == pytest.approx(per_sample / 2)


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def test_diffusion_objective_hands_out_the_scheduled_c() -> None:
    from simpletuner.training.objectives import DiffusionObjective

    scheduler = _ddpm()
    latents = torch.randn(6, 4, 8, 8)
    noised = DiffusionObjective(scheduler, _config(loss_type="huber", huber_schedule="snr", huber_c=0.2)).noise(
        latents, torch.Generator().manual_seed(1))
    alpha_bar = scheduler.alphas_cumprod[noised.timesteps]
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
    assert noised.huber_c.tolist() == pytest.approx(((1 - 0.2) / (1 + sigma) ** 2 + 0.2).tolist(), rel=1e-5)
    plain = DiffusionObjective(scheduler, _config()).noise(latents, torch.Generator().manual_seed(1))
    assert plain.huber_c is None


def test_flow_objective_hands_out_the_scheduled_c() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from simpletuner.training.flow_matching import FlowMatchingObjective

    config = _config(loss_type="smooth_l1", huber_schedule="exponential", huber_c=0.05)
    noised = FlowMatchingObjective(FlowMatchEulerDiscreteScheduler(), config).noise(
        torch.randn(5, 16, 8, 8), torch.Generator().manual_seed(2))
    expected = torch.exp(math.log(0.05) * noised.timesteps / 1000)
    assert noised.huber_c.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_snr_weight_scales_the_loss_only_without_snr_weighting() -> None:
    from simpletuner.training.loss import min_snr_weights
    from simpletuner.training.objectives import DiffusionObjective

    scheduler = _ddpm()
    latents = torch.randn(4, 4, 8, 8)
    scaled = DiffusionObjective(scheduler, _config(snr_weight=0.5)).noise(latents, torch.Generator().manual_seed(3))
    assert scaled.weights.tolist() == [0.5] * 4
    assert DiffusionObjective(scheduler, _config()).noise(latents, torch.Generator().manual_seed(3)).weights is None
    gamma = DiffusionObjective(scheduler, _config(snr_weight=0.5, snr_gamma=5.0)).noise(
        latents, torch.Generator().manual_seed(3))
    assert torch.allclose(gamma.weights, min_snr_weights(scheduler, gamma.timesteps, 5.0))


# ------------------------------------------------------------ gradient clipping


def _model_with_gradients() -> tuple[torch.nn.Linear, list[torch.nn.Parameter]]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    (layer(torch.randn(4, 8)) * 10).pow(2).sum().backward()
    return layer, list(layer.parameters())


def test_grad_clip_value_clamps_each_element() -> None:
    from accelerate import Accelerator

    from simpletuner.training.grad_clip import clip_gradients

    _, parameters = _model_with_gradients()
    before = torch.cat([p.grad.flatten() for p in parameters])
    assert before.abs().max() > 100 and before.abs().min() < 100
    assert clip_gradients(Accelerator(cpu=True), parameters, "value", 100.0) is None
    after = torch.cat([p.grad.flatten() for p in parameters])
    assert after.abs().max().item() == pytest.approx(100.0)
    assert torch.equal(after, before.clamp(-100, 100))  # clamped, not rescaled


def test_grad_clip_norm_rescales_all_together() -> None:
    from accelerate import Accelerator

    from simpletuner.training.grad_clip import clip_gradients

    _, parameters = _model_with_gradients()
    before = torch.cat([p.grad.flatten() for p in parameters])
    norm = clip_gradients(Accelerator(cpu=True), parameters, "norm", 1.0)
    after = torch.cat([p.grad.flatten() for p in parameters])
    assert norm.item() == pytest.approx(before.norm().item(), rel=1e-5)
    assert after.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(after, before / before.norm(), rtol=1e-4)


# -------------------------------------------------------------- bucket pruning


def _bucketed(sizes: dict[tuple[int, int], int]):
    from simpletuner.data.records import ImageRecord, TrainingSample

    samples = []
    for (width, height), count in sizes.items():
        for index in range(count):
            name = f"{width}x{height}_{index}.png"
            record = ImageRecord(path=f"/set/{name}", relative_path=name, width=width, height=height,
                                 size_bytes=1, mtime_ns=1, caption=name)
            samples.append(TrainingSample(dataset_id="set", record=record, original_size=(height, width),
                                          intermediate_size=(height, width), crop_top_left=(0, 0),
                                          target_size=(height, width)))
    return {"set": samples}


def test_disabled_pruning_trains_every_image_every_epoch() -> None:
    from simpletuner.data.sampler import BucketBatchSampler, check_buckets
    from simpletuner.data.schedule import SamplingPolicy

    # A bucket of 5 (a batch of 4 and one left over) and one of 3 (less than a batch).
    samples = _bucketed({(64, 64): 5, (64, 32): 3})
    pruned = BucketBatchSampler(samples, 4, seed=0)
    assert len(pruned) == 1 == check_buckets(samples, 4).batches_per_epoch
    policy = SamplingPolicy(prune=False)
    unpruned = BucketBatchSampler(samples, 4, seed=0, policy=policy)
    report = check_buckets(samples, 4, policy=policy)
    assert len(unpruned) == 3 == report.batches_per_epoch
    assert not report.warnings  # nothing is left out, so nothing to warn about
    for epoch in range(2):
        seen = set()
        for batch in unpruned:
            assert len(batch) == 4 and len({s.bucket for s in batch}) == 1
            seen.update(s.record.relative_path for s in batch)
        assert len(seen) == 8, epoch  # every image, the small bucket's included


def test_pruning_setting_reaches_the_policy() -> None:
    from simpletuner.data.pipeline import sampling_policy

    backends = SimpleNamespace(image_datasets=[])
    assert sampling_policy(_config(), backends).prune is True
    assert sampling_policy(_config(disable_bucket_pruning=True), backends).prune is False


# ----------------------------------------------------------- flow sigma draws


def test_beta_schedule_draws_from_the_beta_distribution_reproducibly() -> None:
    from simpletuner.training.flow_matching import draw_sigmas

    config = _config(flux_use_beta_schedule=True, flux_beta_schedule_alpha=6.0, flux_beta_schedule_beta=1.5)
    sigmas = draw_sigmas(config, 4000, torch.Generator().manual_seed(0))
    assert sigmas.mean().item() == pytest.approx(6.0 / 7.5, abs=0.01)  # Beta(a, b) has mean a / (a + b)
    assert torch.equal(sigmas, draw_sigmas(config, 4000, torch.Generator().manual_seed(0)))
    assert draw_sigmas(_config(), 4000, torch.Generator().manual_seed(0)).mean().item() == pytest.approx(0.5, abs=0.02)


def test_uniform_schedule_replaces_the_schemes_draw() -> None:
    from simpletuner.training.flow_matching import draw_sigmas

    config = _config(flux_use_uniform_schedule=True, flow_weighting_scheme="logit_normal")
    sigmas = draw_sigmas(config, 16, torch.Generator().manual_seed(5))
    assert torch.equal(sigmas, torch.rand(16, generator=torch.Generator().manual_seed(5)))
    logit_normal = draw_sigmas(_config(flow_weighting_scheme="logit_normal"), 16, torch.Generator().manual_seed(5))
    assert not torch.allclose(sigmas, logit_normal)


def test_sigmoid_scale_scales_the_logit() -> None:
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from simpletuner.training.flow_matching import draw_sigmas

    def draw(**values):
        return draw_sigmas(_config(flow_weighting_scheme="logit_normal", **values), 8, torch.Generator().manual_seed(9))

    # Scale 1 is diffusers' logit-normal draw, exactly.
    diffusers_draw = compute_density_for_timestep_sampling(
        "logit_normal", 8, logit_mean=0.0, logit_std=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(draw(), diffusers_draw)
    assert torch.allclose(draw(flow_matching_sigmoid_scale=3.0), torch.sigmoid(3 * torch.logit(diffusers_draw)),
                          atol=1e-5)


# ------------------------------------------------------------ Flux conditioning


def test_flux_random_range_guidance_is_drawn_per_sample() -> None:
    from simpletuner.families.flux import FluxFamily

    family = FluxFamily(_config(model_family="flux", flux_guidance_mode="random-range", flux_guidance_min=2.0,
                                flux_guidance_max=5.0))
    drawn = family.random_conditioning(64, torch.Generator().manual_seed(0))["guidance"]
    assert drawn.min() >= 2.0 and drawn.max() <= 5.0 and drawn.std() > 0.5
    inputs = family.model_inputs({"prompt_embeds": torch.zeros(2, 3, 8), "pooled_prompt_embeds": torch.zeros(2, 8),
                                  "guidance": torch.tensor([2.5, 4.5])}, torch.zeros(2, 4, 4, 4), torch.ones(2))
    assert inputs["guidance"].tolist() == [2.5, 4.5]
    constant = FluxFamily(_config(model_family="flux", flux_guidance_value=3.5))
    assert constant.random_conditioning(4, torch.Generator().manual_seed(0)) == {}
    inputs = constant.model_inputs({"prompt_embeds": torch.zeros(2, 3, 8), "pooled_prompt_embeds": torch.zeros(2, 8)},
                                   torch.zeros(2, 4, 4, 4), torch.ones(2))
    assert inputs["guidance"].tolist() == [3.5, 3.5]


def _flux_lora_modules(preset: str, single_layers: int = 1) -> set[str]:
    """Names of the modules a PEFT LoRA wraps in a small FluxTransformer2DModel under ``preset``."""
    from diffusers import FluxTransformer2DModel
    from peft.tuners.lora import LoraLayer

    from simpletuner.families.flux import FluxFamily
    from simpletuner.training.adapters import add_lora

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=single_layers,
                                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                   pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    config = _config(model_family="flux", model_type="lora", flux_lora_target=preset, lora_rank=2)
    family = FluxFamily(config)
    family.denoiser_loaded(model)
    add_lora(model, config, family.lora_targets(config))
    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def test_flux_lora_presets_choose_their_layers() -> None:
    attention = {f"transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")} | {
        f"single_transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v")}
    context = {f"transformer_blocks.0.attn.{n}" for n in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    context_ff = {"transformer_blocks.0.ff_context.net.0.proj", "transformer_blocks.0.ff_context.net.2"}
    image_ff = {"transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2"}
    single_mlp = {"single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out", "proj_out"}
    assert _flux_lora_modules("mmdit") == attention
    assert _flux_lora_modules("context") == context
    assert _flux_lora_modules("context+ffs") == context | context_ff
    assert _flux_lora_modules("all") == attention | context
    assert _flux_lora_modules("all+ffs") == attention | context | context_ff | image_ff | single_mlp
    norms = {"transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
             "single_transformer_blocks.0.norm.linear"}
    assert _flux_lora_modules("ai-toolkit") == attention | context | context_ff | image_ff | single_mlp | norms


def test_flux_small_presets_train_single_block_outputs() -> None:
    from simpletuner.errors import ModelError

    assert _flux_lora_modules("nano", single_layers=21) == {"single_transformer_blocks.7.proj_out"}
    assert _flux_lora_modules("tiny", single_layers=21) == {"single_transformer_blocks.7.proj_out",
                                                            "single_transformer_blocks.20.proj_out"}
    with pytest.raises(ModelError, match="flux_lora_target=tiny .* 8 single blocks"):
        _flux_lora_modules("tiny", single_layers=8)


# ---------------------------------------------------------- rules and precision


def _problems(argv: list[str], tmp_path: Path) -> str:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError

    base = ["--model_family", "flux", "--pretrained_model_name_or_path", "x/y", "--data_backend_config",
            str(tmp_path / "mdb.json"), "--output_dir", str(tmp_path / "out"), "--print_config"]
    with pytest.raises(ConfigError) as error:
        load_config(base + argv, env={}, cwd=tmp_path)
    return str(error.value)


@pytest.mark.parametrize("argv, fragment", [
    (["--flux_use_beta_schedule", "--flux_use_uniform_schedule"], "keep one of them"),
    (["--flux_guidance_mode", "random-range", "--flux_guidance_min", "5", "--flux_guidance_max", "2"],
     "--flux_guidance_min=5.0 is above --flux_guidance_max=2.0"),
    (["--flux_lora_target", "context", "--model_type", "lora", "--lora_target_modules", "to_q"],
     "--flux_lora_target=context and --lora_target_modules"),
    (["--allow_tf32", "--disable_tf32"], "--allow_tf32 and --disable_tf32"),
])
def test_contradictory_settings_are_refused(argv: list[str], fragment: str, tmp_path: Path) -> None:
    assert fragment in _problems(argv, tmp_path)


def test_fp16_needs_a_gpu() -> None:
    from simpletuner.config.training_rules import fp16_supported
    from simpletuner.quantisation.matrix import Hardware

    values = {"mixed_precision": "fp16"}
    assert "needs a GPU" in fp16_supported(values, Hardware("cpu"))
    assert fp16_supported(values, Hardware("cuda", (8, 0))) is None
    assert fp16_supported({"mixed_precision": "bf16"}, Hardware("cpu")) is None


def test_tf32_and_thread_settings_reach_torch() -> None:
    from simpletuner.training.precision import apply_torch_settings

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        apply_torch_settings(_config(disable_tf32=True, torch_num_threads=1))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_num_threads() == 1
        apply_torch_settings(_config())
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_num_threads() == 1  # unset leaves threads alone
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])


def test_each_process_gets_its_own_seed_only_when_asked() -> None:
    from simpletuner.training.precision import process_seed, seed_process

    assert process_seed(7, 3, per_device=True) == 10
    assert process_seed(7, 3, per_device=False) == 7
    seed_process(process_seed(7, 1, per_device=True))
    rank_one = torch.rand(3)
    seed_process(process_seed(7, 0, per_device=True))
    assert not torch.equal(rank_one, torch.rand(3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, where fp16 is allowed")
def test_fp16_on_a_cpu_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError

    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "x/y", "--data_backend_config",
            str(tmp_path / "mdb.json"), "--output_dir", str(tmp_path / "out"), "--mixed_precision", "fp16"]
    with pytest.raises(ConfigError, match="--mixed_precision=fp16 needs a GPU") as error:
        load_config(argv, env={}, cwd=tmp_path)
    assert len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()
