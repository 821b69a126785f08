"""Metrics reach every tracker in --report_to; wandb and comet_ml run offline and are read back."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from family_harness import train_in_process, write_two_class_project
from wandb_offline import read_offline_run

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path):
    root = write_two_class_project(tmp_path_factory.mktemp("trackers"), per_class=4)
    comet_dir = root / "comet"
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("COMET_START_ONLINE", "false")
    patch.setenv("COMET_OFFLINE_DIRECTORY", str(comet_dir))
    try:
        output = train_in_process(
            root, tiny_sdxl, "sdxl", "--report_to", "tensorboard,wandb,comet_ml", "--tracker_project_name",
            "tiny-project", "--tracker_run_name", "first-run", "--max_train_steps", str(STEPS),
            "--train_batch_size", "2",
            # Norm clipping, so there is a gradient norm to log (value clipping, the default, has none).
            "--grad_clip_method", "norm",
        )
    finally:
        patch.undo()
    return output, comet_dir


def test_wandb_offline_run_has_every_step(tracked_run) -> None:
    output, _ = tracked_run
    run_files = list((output / "logs").rglob("run-*.wandb"))
    assert len(run_files) == 1, "wandb wrote no offline run under the logging dir"
    run = read_offline_run(run_files[0])
    assert run["run"] == {"name": "first-run", "project": "tiny-project"}
    losses = [h for h in run["history"] if "loss" in h]
    assert [h["_step"] for h in losses] == list(range(1, STEPS + 1))
    for metric in ("lr", "grad_norm", "epoch", "step_time", "samples_per_second"):
        assert all(metric in h for h in losses), metric
    assert run["config"]["learning_rate"] == pytest.approx(1e-4)
    assert run["config"]["model_family"] == "sdxl"


def test_comet_offline_archive_has_every_step(tracked_run) -> None:
    _, comet_dir = tracked_run
    archives = list(comet_dir.glob("*.zip"))
    assert len(archives) == 1, "comet_ml wrote no offline archive"
    with zipfile.ZipFile(archives[0]) as archive:
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
        experiment = json.loads(archive.read("experiment.json"))
    metrics = [m["payload"]["metric"] for m in messages if m.get("type") == "metric_msg"]
    loss_steps = sorted(m["step"] for m in metrics if m["metricName"] == "loss")
    assert loss_steps == list(range(1, STEPS + 1))
    parameters = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
                  for m in messages if m.get("type") == "parameter_msg" and "param" in m["payload"]}
    assert float(parameters["learning_rate"]) == pytest.approx(1e-4)
    assert experiment.get("project_name") == "tiny-project"


def test_tensorboard_still_receives_metrics_alongside(tracked_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, _ = tracked_run
    events = next((output / "logs").rglob("events.out.tfevents*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("samples_per_second")] == list(range(1, STEPS + 1))


def test_comet_does_not_report_errors_to_sentry(tracked_run) -> None:
    """comet_ml would send its own errors (with environment details) to Sentry for half its users."""
    from comet_ml import error_tracking

    assert not error_tracking.enabled_in_config()


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """A machine where nobody ran `wandb login`: no key in the environment, .netrc or settings."""
    from wandb.sdk import wandb_setup

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setattr(wandb_setup, "_singleton", None)  # settings read afresh from this environment


def test_wandb_without_a_login_is_refused_before_the_run_starts(no_wandb_login, monkeypatch) -> None:
    """It used to crash after loading the model with wandb's UsageError and a traceback (exit 1)."""
    from types import SimpleNamespace

    from simpletuner.errors import ConfigError
    from simpletuner.trackers.credentials import check_tracker_credentials

    config = SimpleNamespace(report_to=["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match=r"^--report_to wandb: wandb has no API key on this machine; .*"
                                          r"WANDB_MODE=offline"):
        check_tracker_credentials(config)
    check_tracker_credentials(config, env={"WANDB_MODE": "offline"})  # logs locally: nothing to ask
    check_tracker_credentials(SimpleNamespace(report_to=["tensorboard"]))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # wandb's own lookup finds it
    check_tracker_credentials(config)


def test_comet_without_an_api_key_is_refused_before_the_run_starts(tmp_path, monkeypatch) -> None:
    """It used to crash after caching with comet_ml's ValueError and a traceback (exit 1)."""
    from types import SimpleNamespace

    from simpletuner.errors import ConfigError
    from simpletuner.trackers.credentials import check_tracker_credentials

    for name in ("COMET_API_KEY", "COMET_START_ONLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COMET_CONFIG", str(tmp_path / ".comet.config"))
    config = SimpleNamespace(report_to=["comet_ml"])
    with pytest.raises(ConfigError, match=r"^--report_to comet_ml: comet_ml has no API key on this machine; .*"
                                          r"COMET_START_ONLINE=false"):
        check_tracker_credentials(config)
    monkeypatch.setenv("COMET_START_ONLINE", "false")  # an offline archive needs no key
    check_tracker_credentials(config)
    monkeypatch.delenv("COMET_START_ONLINE")
    (tmp_path / ".comet.config").write_text("[comet]\napi_key = abc\n")  # comet_ml's own config file
    check_tracker_credentials(config)
