"""Validation inside real training runs (tiny SDXL and Flux, in this process).

One SDXL run checks most of the feature at once: the steps validated (the
benchmark at 0, then multiples of --validation_steps), file names, sizes and
seeds, grid and manifest, EMA comparison images, CLIP scores, and the images
read back from TensorBoard, wandb (offline) and comet_ml (offline).  Its twin
without validation must end with bitwise the same weights, and a run resumed
from its checkpoint validates at the same steps without repeating any.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from family_harness import train_in_process, write_two_class_project
from wandb_offline import read_offline_run

pytestmark = pytest.mark.slow

# Weights are restored only if validation's effects on them are real: dropout
# makes train/eval mode and the global RNG matter, schedule-free validates the
# averaged weights, EMA swaps weights in and out.
TRAINING = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--lora_rank", "4", "--lora_dropout", "0.1",
            "--learning_rate", "1e-3", "--optimizer", "adamw_schedulefree", "--lr_scheduler", "constant",
            "--use_ema", "--ema_update_interval", "1")
SIZES = [(32, 32), (48, 32)]


def _validation(root: Path, clip: Path) -> tuple[str, ...]:
    library = root / "prompts.json"
    library.write_text(json.dumps({"blue": "a blue circle"}), encoding="utf-8")
    return ("--validation_prompt", "a red square", "--user_prompt_library", str(library),
            "--validation_disable_unconditional", "--validation_steps", "3", "--validation_resolution", "32, 48x32",
            "--num_validation_images", "2", "--validation_num_inference_steps", "1", "--validation_seed", "5",
            "--validation_noise_scheduler", "euler-a", "--ema_validation", "comparison",
            "--evaluation_type", "clip", "--pretrained_evaluation_model_name_or_path", str(clip),
            "--report_to", "tensorboard,wandb,comet_ml", "--tracker_image_layout", "table")


@pytest.fixture(scope="module")
def sdxl_runs(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path):
    from simpletuner.tools.tiny_model import make_tiny_model

    root = write_two_class_project(tmp_path_factory.mktemp("validation"), size=32, per_class=2)
    clip = make_tiny_model("clip", root / "clip")
    patch = pytest.MonkeyPatch()
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("COMET_START_ONLINE", "false"),
                        ("COMET_OFFLINE_DIRECTORY", str(root / "comet"))):
        patch.setenv(name, value)
    try:
        validated = train_in_process(root, tiny_sdxl, "sdxl", *TRAINING, *_validation(root, clip))
        plain = train_in_process(root, tiny_sdxl, "sdxl", *TRAINING, output_name="plain")
        resumed = root / "resumed"
        shutil.copytree(validated / "checkpoint-2", resumed / "checkpoint-2")
        train_in_process(root, tiny_sdxl, "sdxl", *TRAINING, *_validation(root, clip), "--report_to", "none",
                         "--resume_from_checkpoint", "latest", output_name="resumed")
    finally:
        patch.undo()
    return root, validated, plain, resumed


def _manifest(output: Path, step: int) -> dict:
    return json.loads((output / "validation_images" / f"step_{step:06d}" / "manifest.json").read_text())


def test_validates_at_step_zero_and_every_multiple_of_validation_steps(sdxl_runs) -> None:
    _, validated, _, _ = sdxl_runs
    assert sorted(p.name for p in (validated / "validation_images").iterdir()) == ["step_000000", "step_000003"]


def test_files_sizes_seeds_and_manifest(sdxl_runs) -> None:
    _, validated, _, _ = sdxl_runs
    folder = validated / "validation_images" / "step_000003"
    manifest = _manifest(validated, 3)
    assert manifest["step"] == 3 and manifest["grid"] == "grid.png"
    expected = {(short, prompt, w, h, 5 + i, i)
                for short, prompt in (("validation", "a red square"), ("blue", "a blue circle"),
                                      ("validation-ema", "a red square"), ("blue-ema", "a blue circle"))
                for (w, h) in SIZES for i in range(2)}
    found = {(e["shortname"], e["prompt"], e["width"], e["height"], e["seed"], e["index"]) for e in manifest["images"]}
    assert found == expected
    for entry in manifest["images"]:
        assert entry["file"] == f"{entry['shortname']}_{entry['width']}x{entry['height']}_seed{entry['seed']}_{entry['index']}.png"
        with Image.open(folder / entry["file"]) as image:
            assert image.size == (entry["width"], entry["height"])
    assert sorted(p.name for p in folder.iterdir()) == sorted([e["file"] for e in manifest["images"]]
                                                              + ["grid.png", "manifest.json"])
    # Two seeds draw two different images; EMA weights draw other images than the trained ones.
    pixels = {e["file"]: np.asarray(Image.open(folder / e["file"])) for e in manifest["images"]}
    assert not np.array_equal(pixels["validation_32x32_seed5_0.png"], pixels["validation_32x32_seed6_1.png"])
    assert not np.array_equal(pixels["validation_32x32_seed5_0.png"], pixels["validation-ema_32x32_seed5_0.png"])


def test_benchmark_is_the_base_model_and_sits_left_of_every_row(sdxl_runs) -> None:
    _, validated, _, _ = sdxl_runs
    benchmark = _manifest(validated, 0)
    assert {e["weights"] for e in benchmark["images"]} == {"base"}
    assert len(benchmark["images"]) == 2 * len(SIZES) * 2  # two prompts, two sizes, two seeds; no EMA images
    grid = np.asarray(Image.open(validated / "validation_images" / "step_000003" / "grid.png"))
    # Rows: the two prompts.  Cells: 48x32 with a 4 px gap; 4 benchmark + 8 later images per row.
    assert grid.shape == (2 * 32 + 4, 12 * 48 + 11 * 4, 3)
    first_benchmark = np.asarray(Image.open(validated / "validation_images" / "step_000000"
                                            / "validation_32x32_seed5_0.png"))
    assert np.array_equal(grid[:32, :32], first_benchmark)
    first_trained = np.asarray(Image.open(validated / "validation_images" / "step_000003"
                                          / "validation_32x32_seed5_0.png"))
    assert np.array_equal(grid[:32, 4 * 52:4 * 52 + 32], first_trained)
    blue_row = np.asarray(Image.open(validated / "validation_images" / "step_000000" / "blue_32x32_seed5_0.png"))
    assert np.array_equal(grid[36:68, :32], blue_row)


def test_clip_score_logged_per_prompt_and_averaged(sdxl_runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import CLIPModel, CLIPProcessor

    root, validated, _, _ = sdxl_runs
    accumulator = EventAccumulator(str(next((validated / "logs").rglob("events.out.tfevents*")).parent))
    accumulator.Reload()
    logged = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"] if "clip_score" in tag}
    assert set(logged) == {"validation/clip_score", "validation/clip_score/validation", "validation/clip_score/blue",
                           "validation/clip_score/validation-ema", "validation/clip_score/blue-ema"}
    assert [e.step for e in logged["validation/clip_score"]] == [0, 3]
    # Recomputed from the saved files with transformers' CLIP: 100 * max(cos, 0), averaged per prompt.
    model, processor = CLIPModel.from_pretrained(root / "clip"), CLIPProcessor.from_pretrained(root / "clip")
    folder = validated / "validation_images" / "step_000003"
    manifest = _manifest(validated, 3)
    per_prompt = {}
    for entry in manifest["images"]:
        inputs = processor(text=[entry["prompt"]], images=[Image.open(folder / entry["file"])], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert entry["clip_score"] == pytest.approx(100 * max(cos, 0), abs=1e-3)
        per_prompt.setdefault(entry["shortname"], []).append(entry["clip_score"])
    assert any(score > 0 for scores in per_prompt.values() for score in scores), "every score clamped to 0"
    for name, scores in per_prompt.items():
        assert logged[f"validation/clip_score/{name}"][-1].value == pytest.approx(sum(scores) / len(scores), abs=1e-3)
    means = [sum(s) / len(s) for s in per_prompt.values()]
    assert logged["validation/clip_score"][-1].value == pytest.approx(sum(means) / len(means), abs=1e-3)
    assert [e.step for e in accumulator.Scalars("validation/duration_s")] == [0, 3]


def test_tensorboard_holds_every_image_and_the_grid(sdxl_runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, validated, _, _ = sdxl_runs
    accumulator = EventAccumulator(str(next((validated / "logs").rglob("events.out.tfevents*")).parent),
                                   size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    # add_images writes one summary per series; its images are tiled in one picture.
    for short in ("validation", "blue", "validation-ema", "blue-ema"):
        for w, h in SIZES:
            events = accumulator.Images(f"validation/{short}_{w}x{h}")
            assert [e.step for e in events] == ([0, 3] if "ema" not in short else [3])
    grid = accumulator.Images("validation/grid")[-1]
    assert (grid.step, grid.width, grid.height) == (3, 12 * 48 + 11 * 4, 2 * 32 + 4)
    assert len(tags) == 4 * len(SIZES) + 1


def test_wandb_table_has_a_row_per_image(sdxl_runs) -> None:
    _, validated, _, _ = sdxl_runs
    run_file = next((validated / "logs").rglob("run-*.wandb"))
    run = read_offline_run(run_file)
    # The reader flattens nested values: a table is logged as a file reference.
    tables = [h for h in run["history"] if h.get("validation/images/_type") == "table-file"]
    assert [h["_step"] for h in tables] == [0, 3]
    table_file = run_file.parent / "files" / tables[-1]["validation/images/path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["shortname", "prompt", "resolution", "seed", "index", "image"]
    assert len(table["data"]) == len(_manifest(validated, 3)["images"])
    assert {(row[0], row[2], row[3]) for row in table["data"]} == {
        (e["shortname"], f"{e['width']}x{e['height']}", e["seed"]) for e in _manifest(validated, 3)["images"]}


def test_comet_archive_holds_every_image(sdxl_runs) -> None:
    root, validated, _, _ = sdxl_runs
    archive = zipfile.ZipFile(next((root / "comet").glob("*.zip")))
    messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
    uploads = [m["payload"] for m in messages if m.get("type") == "file_upload"
               and m["payload"].get("upload_type") == "visualization"]
    names = {(u["additional_params"]["figName"], u["additional_params"]["step"]) for u in uploads}
    for entry in _manifest(validated, 3)["images"]:
        assert (entry["file"], 3) in names
        # The image itself is in the archive, as the PNG that was saved.
        upload = next(u for u in uploads if u["additional_params"]["figName"] == entry["file"]
                      and u["additional_params"]["step"] == 3)
        with archive.open(upload["file_path"]) as stored:
            assert np.array_equal(np.asarray(Image.open(stored).convert("RGB")), np.asarray(
                Image.open(validated / "validation_images" / "step_000003" / entry["file"])))
    assert ("grid_step3.png", 3) in names


def test_validation_does_not_change_training(sdxl_runs) -> None:
    _, validated, plain, _ = sdxl_runs
    for name in ("pytorch_lora_weights.safetensors", "ema/pytorch_lora_weights.safetensors"):
        expected, actual = load_file(plain / name), load_file(validated / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}: {key}"


def test_resumed_run_validates_at_the_same_steps_without_repeats(sdxl_runs) -> None:
    _, validated, _, resumed = sdxl_runs
    # Resumed at step 2: the benchmark (step 0) is not drawn again, step 3 is.
    assert sorted(p.name for p in (resumed / "validation_images").iterdir()) == ["step_000003"]
    for entry in _manifest(validated, 3)["images"]:
        before = np.asarray(Image.open(validated / "validation_images" / "step_000003" / entry["file"]))
        after = np.asarray(Image.open(resumed / "validation_images" / "step_000003" / entry["file"]))
        assert np.array_equal(before, after), entry["file"]
