"""The held-out evaluation loss (--eval_dataset_id, --num_eval_images).

Fast tests check the pieces: the option's checks, that the held-out dataset
never reaches the sampler, the fixed draws, the objectives at fixed points
and the schedule-free weight swap.  Slow tests train a tiny SDXL (and Flux)
and read ``eval/loss`` back from TensorBoard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from family_harness import train_in_process, write_two_class_project

REPO = Path(__file__).resolve().parents[1]
RANGE_TAGS = ["eval/loss_t000-249", "eval/loss_t250-499", "eval/loss_t500-749", "eval/loss_t750-999"]


def _add_held_out(root: Path, count: int = 3, dataset_id: str = "held") -> Path:
    """A third dataset of ``count`` images unlike the training ones, in the project's mdb.json."""
    folder = root / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (200 - 40 * index, 60 + 50 * index, 90)
        Image.new("RGB", (64, 64), colour).save(folder / f"held_{index}.png")
        (folder / f"held_{index}.txt").write_text("red" if index % 2 else "blue", encoding="utf-8")
    mdb = root / "mdb.json"
    entries = json.loads(mdb.read_text(encoding="utf-8"))
    entries.insert(1, {**entries[0], "id": dataset_id, "instance_data_dir": str(folder),
                       "cache_dir_vae": str(root / "cache" / dataset_id)})
    mdb.write_text(json.dumps(entries), encoding="utf-8")
    return root


def _scalars(output: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((output / "logs").rglob("events.out.tfevents*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if tag.startswith("eval/")}


# ------------------------------------------------------------------ bad input


def _train_py(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _flags(root: Path, model: Path, *extra: str) -> list[str]:
    return ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model), "--data_backend_config",
            str(root / "mdb.json"), "--output_dir", str(root / "out"), "--max_train_steps", "1",
            "--mixed_precision", "no", "--seed", "0", *extra]


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_an_eval_dataset_id_naming_no_dataset_stops_before_anything_is_loaded(tmp_path: Path, tiny_sdxl: Path):
    root = _add_held_out(write_two_class_project(tmp_path, per_class=1))
    line = _one_error_line(_train_py(root, *_flags(root, tiny_sdxl, "--eval_dataset_id", "hold")))
    assert "--eval_dataset_id 'hold' names no enabled image dataset" in line
    assert "use one of: classes, held" in line
    assert not (root / "cache").exists() and not (root / "out").exists()


def test_holding_out_the_only_image_dataset_is_refused(tmp_path: Path, tiny_sdxl: Path):
    root = write_two_class_project(tmp_path, per_class=1)
    line = _one_error_line(_train_py(root, *_flags(root, tiny_sdxl, "--eval_dataset_id", "classes")))
    assert "--eval_dataset_id 'classes' is the only image dataset" in line
    assert not (root / "cache").exists()


# ------------------------------------------------------ never trained on


def _data_config(root: Path, **options) -> SimpleNamespace:
    from simpletuner.data.schema import DATASET_DEFAULT_OPTIONS

    values = {name: None for name in DATASET_DEFAULT_OPTIONS}
    values.update(data_backend_config=str(root / "mdb.json"), train_batch_size=2, data_backend_sampling=None,
                  override_dataset_config=False, num_eval_images=2, **options)
    return SimpleNamespace(**values)


def test_the_held_out_dataset_is_planned_but_never_batched_nor_counted(tmp_path: Path):
    from simpletuner.data.pipeline import load_backends, prepare_training_data

    plain = write_two_class_project(tmp_path / "plain", per_class=4)
    config = _data_config(plain)
    baseline = prepare_training_data(config, load_backends(config), show_progress=False)

    root = _add_held_out(write_two_class_project(tmp_path / "held", per_class=4), count=3)
    config = _data_config(root, eval_dataset_id="held")
    data = prepare_training_data(config, load_backends(config), show_progress=False)

    assert sorted(s.record.relative_path for s in data.held_out["held"]) == [f"held_{i}.png" for i in range(3)]
    assert "held" in data.cached_sets() and "held" not in data.report.counts
    assert data.report.batches_per_epoch == baseline.report.batches_per_epoch == 4
    assert any("3 image(s) held out for the evaluation loss" in note.text for note in data.notes)
    sampler = data.sampler(seed=0)
    batches = sampler.stream()
    seen = {s.dataset_id for _ in range(3 * sampler.batches_per_epoch()) for s in next(batches)}
    assert seen == {"classes"}


# ------------------------------------------------------------ fixed draws


def test_fixed_draws_repeat_per_seed_and_image_and_leave_the_global_generator_alone():
    from simpletuner.evaluation.fixed_noise import fixed_draw, range_names

    state = torch.random.get_rng_state()
    first = fixed_draw(5, 2, (4, 8, 8))
    assert torch.equal(torch.random.get_rng_state(), state), "drawing consumed the global generator"
    torch.randn(100)  # whatever training draws in between
    again = fixed_draw(5, 2, (4, 8, 8))
    assert torch.equal(first.noise, again.noise) and torch.equal(first.positions, again.positions)
    assert not torch.equal(first.noise, fixed_draw(5, 3, (4, 8, 8)).noise)
    assert not torch.equal(first.noise, fixed_draw(6, 2, (4, 8, 8)).noise)
    for r, position in enumerate(first.positions.tolist()):
        assert r / 4 <= position < (r + 1) / 4
    assert range_names(1000) == [tag.removeprefix("eval/loss_") for tag in RANGE_TAGS]


def test_objectives_at_fixed_points_follow_the_training_formulas():
    from diffusers import DDPMScheduler

    from simpletuner.training.flow_matching import FlowMatchingObjective
    from simpletuner.training.objectives import DiffusionObjective

    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    positions = torch.tensor([0.1, 0.8], dtype=torch.float64)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    config = SimpleNamespace(snr_gamma=5.0, use_soft_min_snr=False, soft_min_snr_sigma_data=None, noise_offset=0.0,
                             noise_offset_probability=0.25, input_perturbation=0.0, timestep_bias_strategy="none",
                             flow_weighting_scheme="none", flow_shift=3.0, flow_resolution_shifting=False)
    diffusion = DiffusionObjective(scheduler, config)
    noised = diffusion.noised_at(latents, noise, positions)
    assert noised.timesteps.tolist() == [100, 800]
    assert torch.equal(noised.noisy, scheduler.add_noise(latents, noise, noised.timesteps))
    assert torch.equal(noised.target, scheduler.get_velocity(latents, noise, noised.timesteps))
    assert torch.equal(noised.weights, diffusion.loss_weights(noised.timesteps))

    flow = FlowMatchingObjective(scheduler, config).noised_at(latents, noise, positions)
    sigmas = positions.float().view(-1, 1, 1, 1)
    assert torch.allclose(flow.noisy, (1 - sigmas) * latents + sigmas * noise)
    assert torch.equal(flow.target, noise - latents)
    assert torch.allclose(flow.timesteps, torch.tensor([100.0, 800.0]))


def test_schedule_free_weights_are_averaged_inside_and_restored_bitwise_after():
    from simpletuner.evaluation.weights import averaged_weights
    from simpletuner.training.schedulefree_kahan import AdamWScheduleFreeKahan

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):  # bf16 keeps Kahan rounding errors (y_error) too
        weight = torch.nn.Parameter(torch.randn(64, 64, dtype=dtype))
        optimizer = AdamWScheduleFreeKahan([weight], lr=0.05, warmup_steps=0)
        optimizer.train()
        for _ in range(3):
            weight.grad = torch.randn_like(weight)
            optimizer.step()
        trained = weight.detach().clone()
        errors = {k: v.clone() for k, v in optimizer.state[weight].items() if torch.is_tensor(v)}
        with averaged_weights(optimizer, [weight]):
            assert not torch.equal(weight, trained), "the averaged weights were not swapped in"
        assert torch.equal(weight, trained), dtype
        for key, value in errors.items():
            assert torch.equal(optimizer.state[weight][key], value), (dtype, key)
        assert optimizer.param_groups[0]["train_mode"]


class _Recorder(torch.nn.Module):
    """A denoiser that notes its mode at each call and draws from the global generator, as some do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.dropout = torch.nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor]:
        self.calls.append((self.training, torch.is_grad_enabled()))
        torch.rand(1)
        return (self.linear(self.dropout(sample.movedim(1, -1))).movedim(-1, 1),)


def _recorder_evaluator(count: int):
    from diffusers import DDPMScheduler

    from simpletuner.evaluation.held_out import HeldOutEvaluator
    from simpletuner.training.objectives import DiffusionObjective

    samples = [f"image-{i}" for i in range(count)]
    latents = {name: torch.randn(4, 8, 8) for name in samples}
    lookup = SimpleNamespace(latents=latents.__getitem__, text=lambda sample: {"embeds": torch.zeros(3)},
                             ensure_latents=lambda samples: None)  # every latent is there already
    family = SimpleNamespace(sample_conditioning=lambda batch: {}, prediction=lambda output, noisy: output[0],
                             model_inputs=lambda batch, noisy, timesteps: {"sample": noisy, "timestep": timesteps})
    config = SimpleNamespace(snr_gamma=None, use_soft_min_snr=False, noise_offset=0.0, input_perturbation=0.0,
                             timestep_bias_strategy="none")
    objective = DiffusionObjective(DDPMScheduler(num_train_timesteps=1000), config)
    logged = []
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"),
                                  is_main_process=True, log=lambda values, step: logged.append((step, values)))
    return HeldOutEvaluator(samples, lookup, family, objective, 3, accelerator, torch.float32, 2), logged


def test_an_evaluation_runs_in_eval_mode_without_grad_and_leaves_mode_and_random_state_alone():
    evaluator, logged = _recorder_evaluator(count=3)
    model = _Recorder().train()
    state = torch.random.get_rng_state()
    first = evaluator.run(model, step=0)
    assert torch.equal(torch.random.get_rng_state(), state), "the evaluation moved the global generator"
    assert model.training, "the denoiser was left in eval mode"
    assert model.calls == [(False, False)] * 6  # 3 images x 4 ranges in batches of 2
    torch.randn(10)
    assert evaluator.run(model, step=5) == first
    assert [step for step, _ in logged] == [0, 5]
    assert set(logged[0][1]) == {"eval/loss", *RANGE_TAGS, "eval/seconds"}
    assert first["eval/loss"] == pytest.approx(sum(first[tag] for tag in RANGE_TAGS) / 4)


# -------------------------------------------------------------- end to end

# LoRA dropout draws from the global generator at every training step, so an
# evaluation that drew its noise there, or left dropout on, would not repeat.
EVAL_FLAGS = ("--eval_dataset_id", "held", "--num_eval_images", "2", "--validation_steps", "2",
              "--report_to", "tensorboard", "--max_train_steps", "4", "--train_batch_size", "2",
              "--learning_rate", "1e-3", "--lora_rank", "4", "--lora_dropout", "0.1")


@pytest.fixture(scope="module")
def sdxl_runs(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path) -> dict[str, Path]:
    held = _add_held_out(write_two_class_project(tmp_path_factory.mktemp("held"), per_class=4))
    plain = write_two_class_project(tmp_path_factory.mktemp("plain"), per_class=4)
    return {
        "trained": train_in_process(held, tiny_sdxl, "sdxl", *EVAL_FLAGS, "--checkpointing_steps", "2"),
        "still": train_in_process(held, tiny_sdxl, "sdxl", *EVAL_FLAGS, "--learning_rate", "0",
                                  output_name="still"),
        "plain": train_in_process(plain, tiny_sdxl, "sdxl", *EVAL_FLAGS[6:]),
    }


@pytest.mark.slow
def test_eval_loss_is_logged_per_range_at_validation_steps_and_moves_with_training(sdxl_runs) -> None:
    scalars = _scalars(sdxl_runs["trained"])
    for tag in ["eval/loss", *RANGE_TAGS]:
        assert [step for step, _ in scalars[tag]] == [0, 2, 4], tag
    losses = [value for _, value in scalars["eval/loss"]]
    ranges = [[value for _, value in scalars[tag]] for tag in RANGE_TAGS]
    for step in range(3):  # eval/loss is the mean of the four ranges (each over the same images)
        assert losses[step] == pytest.approx(sum(r[step] for r in ranges) / 4, rel=1e-6)
    assert len(set(losses)) == 3, f"training steps did not change the held-out loss: {losses}"


@pytest.mark.slow
def test_the_same_weights_give_the_same_eval_loss_at_every_evaluation_and_in_every_run(sdxl_runs) -> None:
    # learning rate 0: the weights never change while the training generator moves on.
    still = _scalars(sdxl_runs["still"])
    for tag in ["eval/loss", *RANGE_TAGS]:
        values = [value for _, value in still[tag]]
        assert len(values) == 3 and len(set(values)) == 1, (tag, values)
    trained = _scalars(sdxl_runs["trained"])
    assert still["eval/loss"][0] == trained["eval/loss"][0]  # the same seed: the same baseline


@pytest.mark.slow
def test_evaluating_a_held_out_dataset_does_not_change_training(sdxl_runs) -> None:
    # The run without the held-out dataset (and without evaluation) trains the very same weights.
    expected = load_file(sdxl_runs["plain"] / "pytorch_lora_weights.safetensors")
    actual = load_file(sdxl_runs["trained"] / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    changed = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not changed, changed[:5]
    assert not (sdxl_runs["plain"] / "logs").exists() or not _scalars(sdxl_runs["plain"])


@pytest.mark.slow
def test_a_resumed_run_evaluates_at_the_same_steps_without_repeating_one(sdxl_runs, tiny_sdxl: Path) -> None:
    trained = sdxl_runs["trained"]
    resumed = trained.parent / "resumed"
    shutil.copytree(trained / "checkpoint-2", resumed / "checkpoint-2")
    train_in_process(trained.parent, tiny_sdxl, "sdxl", *EVAL_FLAGS, "--resume_from_checkpoint", "latest",
                     output_name="resumed")
    expected, actual = _scalars(trained), _scalars(resumed)
    for tag in ["eval/loss", *RANGE_TAGS]:
        assert actual[tag] == expected[tag][-1:], tag  # step 4 only, with the uninterrupted run's value


@pytest.mark.slow
def test_flux_eval_loss_at_fixed_sigmas_repeats_for_the_same_weights(tmp_path: Path, tiny_flux: Path) -> None:
    root = _add_held_out(write_two_class_project(tmp_path, per_class=2))
    output = train_in_process(root, tiny_flux, "flux", "--eval_dataset_id", "held", "--num_eval_images", "1",
                              "--validation_steps", "1", "--max_train_steps", "2", "--learning_rate", "0",
                              "--report_to", "tensorboard", "--lora_rank", "4", "--lora_dropout", "0.1")
    scalars = _scalars(output)
    for tag in ["eval/loss", *RANGE_TAGS]:
        assert [step for step, _ in scalars[tag]] == [0, 1, 2], tag
        assert len({value for _, value in scalars[tag]}) == 1, (tag, scalars[tag])


@pytest.mark.slow
def test_two_processes_log_the_eval_loss_of_one(tmp_path: Path, tiny_sdxl: Path) -> None:
    from train_sh import run_train_sh, tiny_project

    root = tiny_project(tmp_path, tiny_sdxl, images=4, max_train_steps=1, eval_dataset_id="held",
                        num_eval_images=3, report_to="tensorboard")
    mdb = root / "config" / "multidatabackend.json"
    (root / "mdb.json").write_text(mdb.read_text(encoding="utf-8"), encoding="utf-8")
    _add_held_out(root, count=3)  # 3 images: rank 0 evaluates two of them, rank 1 one
    mdb.write_text((root / "mdb.json").read_text(encoding="utf-8"), encoding="utf-8")
    env = root / "config" / "config.env"
    figures = {}
    for processes in (1, 2):  # the second run reuses the first one's caches: the same latents
        env.write_text(env.read_text(encoding="utf-8").replace("NUM_PROCESSES=1", f"NUM_PROCESSES={processes}"))
        result = run_train_sh(root, "--output_dir", f"out{processes}")
        assert f"x {processes} process(es)" in result.stderr, result.stderr[-3000:]
        figures[processes] = _scalars(root / f"out{processes}")
    assert figures[1].keys() == figures[2].keys() >= {"eval/loss", *RANGE_TAGS}
    for tag in ["eval/loss", *RANGE_TAGS]:
        assert figures[2][tag] == figures[1][tag], tag
