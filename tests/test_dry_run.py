"""``--dry_run``: everything up to loading weights, reported; exit 0 when the run would start, 2 when not.

The model used here has every safetensors file cut after its header: the
estimate can count parameters, but loading any weight would fail, so a
dry run that succeeds on it has loaded none.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from simpletuner.cli import train
from simpletuner.tools.demo_data import make_demo_dataset
from weightless import header_only_copy as _header_only_copy




@pytest.fixture(scope="module")
def weightless_sdxl(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _header_only_copy(tiny_sdxl, tmp_path_factory.mktemp("weightless") / "model")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND", "TRAINING_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    make_demo_dataset(tmp_path / "data", count=8, sizes=((64, 64),))
    (tmp_path / "empty").mkdir()
    for name, folder in (("mdb.json", "data"), ("empty.json", "empty"), ("missing.json", "nowhere")):
        (tmp_path / name).write_text(json.dumps([
            {"id": "pics", "type": "local", "instance_data_dir": folder, "cache_dir_vae": "cache/vae",
             "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
            {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
        ]))
    return tmp_path


def _dry_run(model: Path, capsys: pytest.CaptureFixture, *flags: str, data: str = "mdb.json") -> tuple[int, str, str]:
    code = train.main(["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
                 "--data_backend_config", data, "--output_dir", "out", "--train_batch_size", "2",
                 "--mixed_precision", "no", "--max_train_steps", "10", "--checkpointing_steps", "4",
                 "--dry_run", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_config_would_start_and_nothing_is_loaded_or_written(project: Path, weightless_sdxl: Path, capsys):
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    code, out, err = _dry_run(weightless_sdxl, capsys, "--push_to_hub", "--hub_model_id", "me/cats",
                               "--hub_token", "hf_do_not_print_me")
    assert code == 0, err
    assert "hf_do_not_print_me" not in out + err
    assert '  hub_token = "***' in out  # the resolved config, redacted
    assert "  max_train_steps = 10" in out
    assert "--pretrained_model_name_or_path=" in out and "passed" in out
    assert "dataset 'pics': 8 image files found, 8 usable, 0 skipped" in out
    assert re.search(r"64x64 +8 +4\b", out), out  # the bucket table: 8 images, 4 batches
    assert "0 of 8 image(s) cached, 8 would be encoded" in out
    assert "4 steps per epoch (batch 2 x 1 process(es)); 10 steps in total" in out
    assert "3 epoch(s); a checkpoint every 4 steps (2 in all)" in out
    assert "a CPU run: the model trains in system RAM; available system RAM" in out
    assert "peak:" in out and ": fits" in out
    assert "--output_dir=out/cats:" in out and "2 checkpoint(s) of" in out
    assert out.rstrip().endswith("dry run: the run would start (train without --dry_run)")
    # Nothing trained, no output folder, no cache: only discovery's own record of headers may appear.
    after = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    assert [p for p in after if p not in before] == ["cache", "cache/vae", "cache/vae/discovery.json"]


def test_a_dry_run_moves_no_image_to_quarantine(project: Path, weightless_sdxl: Path, capsys):
    """--delete_problematic_images moves files in a real run; a dry run only reports them."""
    (project / "data" / "empty.png").write_bytes(b"")
    code, out, err = _dry_run(weightless_sdxl, capsys, "--delete_problematic_images")
    assert code == 0, err
    assert "9 image files found, 8 usable, 1 skipped" in out
    assert (project / "data" / "empty.png").exists()
    assert not list(project.glob("*.rejected"))


def test_an_empty_dataset_is_answered_before_any_model_loads(project: Path, weightless_sdxl: Path, capsys):
    code, out, err = _dry_run(weightless_sdxl, capsys, data="empty.json")
    assert code == 2
    assert "error: dataset 'pics': no usable images in" in err
    assert "empty exists but holds no files" in out
    assert "steps\n  not counted" in out
    assert "memory estimate" in out  # the other sections still report
    code, out, err = _dry_run(weightless_sdxl, capsys, data="missing.json")
    assert code == 2
    assert "error: dataset 'pics': key 'instance_data_dir' = 'nowhere' is not a folder" in err
    assert "memory estimate" in out


def test_a_model_too_large_for_the_stated_memory(project: Path, weightless_sdxl: Path, capsys):
    code, out, err = _dry_run(weightless_sdxl, capsys, "--memory_limit_gb", "0.001")
    assert code == 2
    assert "--memory_limit_gb: 1 MiB" in out
    assert "error: the memory estimate (" in err and "exceeds --memory_limit_gb (1 MiB)" in err
    # --skip_memory_check is the user's word that it should start anyway.
    code, out, err = _dry_run(weightless_sdxl, capsys, "--memory_limit_gb", "0.001", "--skip_memory_check")
    assert code == 0, err
    assert "does not fit, but --skip_memory_check starts anyway" in out


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 100 KiB tmpfs (mounting needs root on Linux; elsewhere the test skips and says why)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root on Linux): {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_too_small_for_the_checkpoints(project: Path, weightless_sdxl: Path, capsys, small_disk: Path):
    code, out, err = _dry_run(weightless_sdxl, capsys, "--output_dir", str(small_disk / "run"))
    assert code == 2
    assert f"error: --output_dir={small_disk / 'run'} has " in err
    assert "but this run will write about" in err and "2 checkpoint(s)" in err
    # Keeping fewer checkpoints is one of the ways out the message names.
    assert "lower --checkpoints_total_limit" in err


def test_train_sh_dry_run_reports_in_one_process(weightless_sdxl: Path, tmp_path: Path):
    """./train.sh --dry_run with two processes in config.env: none is started; one reports for both."""
    from train_sh import tiny_project, train_sh

    project = tiny_project(tmp_path / "project", weightless_sdxl, max_train_steps=10)
    env_file = project / "config" / "config.env"
    env_file.write_text(env_file.read_text().replace("TRAINING_NUM_PROCESSES=1", "TRAINING_NUM_PROCESSES=2"))
    result = train_sh(project, "--dry_run", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 steps per epoch (batch 2 x 2 process(es)); 10 steps in total" in result.stdout
    assert result.stdout.count("dry run: the run would start") == 1
    assert not (project / "output").exists()


def test_what_the_caches_hold(project: Path, tiny_sdxl: Path, capsys):
    """After a --cache_only run every entry is found; a new image is the one left to encode."""
    assert train.main(["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
                       "--data_backend_config", "mdb.json", "--output_dir", "out", "--train_batch_size", "2",
                       "--mixed_precision", "no", "--cache_only", "--seed", "1"]) == 0
    capsys.readouterr()
    code, out, err = _dry_run(tiny_sdxl, capsys)
    assert code == 0, err
    assert "all 8 image(s) cached, nothing to encode" in out
    assert "all 6 caption(s) cached, nothing to encode" in out
    make_demo_dataset(project / "data" / "more", count=1, sizes=((64, 64),), seed=5)
    code, out, err = _dry_run(tiny_sdxl, capsys)
    assert code == 0, err
    assert "8 of 9 image(s) cached, 1 would be encoded" in out


@pytest.mark.parametrize("flags, reason", [
    # SimpleTuner's megapixel value with a pixel resolution_type: used to crash the estimate with a traceback.
    (("--resolution", "1.0", "--resolution_type", "pixel_area"), "must be at least 8 pixels, got 1"),
    # A pixel value read as megapixels: used to add a false "the memory estimate (64.5 GiB) exceeds" error.
    (("--resolution", "1024", "--resolution_type", "area"), "is read as megapixels"),
])
def test_a_bad_global_resolution_is_one_problem_not_a_crash(project: Path, weightless_sdxl: Path, capsys,
                                                            flags: tuple[str, ...], reason: str):
    mdb = json.loads((project / "mdb.json").read_text())
    del mdb[0]["resolution"]  # the dataset takes --resolution
    (project / "inherits.json").write_text(json.dumps(mdb))
    code, out, err = _dry_run(weightless_sdxl, capsys, *flags, data="inherits.json")
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], err
    assert "Traceback" not in out + err
    assert "not estimated" in out.split("== memory", 1)[1].split("==", 1)[0]


def test_images_without_caption_files_are_told_so(project: Path, weightless_sdxl: Path, capsys):
    """Every image skipped for a missing .txt used to get 'add .jpg/.png/.webp images, fix instance_data_dir'."""
    for caption in (project / "data").glob("*.txt"):
        caption.unlink()
    code, out, err = _dry_run(weightless_sdxl, capsys)
    assert code == 2
    assert (f"error: dataset 'pics': no usable images in {project / 'data'} (8 image files found, 0 usable, 8 skipped); none has a "
            "caption file beside it (photo_001.png + photo_001.txt); add them, or set caption_strategy filename or "
            "instanceprompt (with instance_prompt)") in err.splitlines(), err
