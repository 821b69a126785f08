"""train.sh speaks as train.py does: our lines only, exit 2 for configuration, 1 for a crash.

Each test runs ``bash train.sh`` in a project folder the way a user does and
reads the console and the exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train_sh import REPO, tiny_project, train_sh, user_env, write_json

BOGUS_BACKEND = "TRAINING_DYNAMO_BACKEND=bogus: not a torch.compile backend"


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """Every console line, checked to be one of ours."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr[-3000:]
    return lines


@pytest.fixture
def project(tmp_path: Path, tiny_sdxl: Path) -> Path:
    return tiny_project(tmp_path / "project", tiny_sdxl, max_train_steps=2)


def test_a_typo_in_config_json_is_one_line_and_exit_2(project: Path) -> None:
    config = project / "config" / "config.json"
    write_json(config, {**json.loads(config.read_text()), "learning_rat": 1e-4})
    result = train_sh(project)
    assert result.returncode == 2
    assert _error_lines(result) == [
        f"error: {config}: unknown option --learning_rat; did you mean --learning_rate?"
    ]


def _with_hook(env: dict[str, str], hook_dir: Path, code: str) -> dict[str, str]:
    """``code`` runs at the start of every Python process (as sitecustomize)."""
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(code)
    return {**env, "PYTHONPATH": f"{hook_dir}:{env['PYTHONPATH']}"}


_NOTE_TRAINING_PROCESSES = """
import os, pathlib
if "LOCAL_RANK" in os.environ:  # set by the launcher for each training process
    pathlib.Path(os.environ["MARKERS"], "rank" + os.environ["LOCAL_RANK"]).touch()
"""


def test_two_processes_report_a_configuration_error_once_before_starting_them(
    project: Path, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    env = _with_hook(user_env(TRAINING_NUM_PROCESSES="2", MARKERS=str(markers)), tmp_path / "hook",
                     _NOTE_TRAINING_PROCESSES)
    result = train_sh(project, "--learnin_rate", "1", env=env)
    assert result.returncode == 2
    assert _error_lines(result) == ["error: command line: unknown option --learnin_rate; did you mean --learning_rate?"]
    assert not list(markers.iterdir()), "training processes were started for a config that cannot train"

    # The hook does see the training processes when a valid config starts them.
    started = train_sh(project, "--print_config", env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    assert sorted(marker.name for marker in markers.iterdir()) == ["rank0", "rank1"]


def test_the_environment_wins_over_config_env(project: Path) -> None:
    # config.env (as the wizard writes it) says "no"; the user's variable must win.
    result = train_sh(project, env=user_env(TRAINING_DYNAMO_BACKEND="bogus"))
    assert result.returncode == 2
    assert BOGUS_BACKEND in _error_lines(result)[0]
    assert "config.env" not in result.stderr

    result = train_sh(project, env=user_env(SIMPLETUNER_LOG_LEVEL="chatty"))
    assert result.returncode == 2
    assert _error_lines(result) == [
        "error: SIMPLETUNER_LOG_LEVEL=chatty: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ]


def test_a_bad_value_in_config_env_names_the_file_and_a_variable_overrides_it(project: Path) -> None:
    env_file = project / "config" / "config.env"
    env_file.write_text(env_file.read_text() + "TRAINING_DYNAMO_BACKEND=bogus\n")
    result = train_sh(project, "--print_config")
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert BOGUS_BACKEND in line and line.endswith("(set in config/config.env)")

    fixed = train_sh(project, "--print_config", env=user_env(TRAINING_DYNAMO_BACKEND="no"))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert json.loads(fixed.stdout)["model_family"] == "sdxl"


def test_train_py_gives_the_same_message_for_a_launch_variable(project: Path) -> None:
    through_sh = train_sh(project, env=user_env(TRAINING_DYNAMO_BACKEND="bogus"))
    through_py = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=project,
                                env=user_env(TRAINING_DYNAMO_BACKEND="bogus"), capture_output=True, text=True,
                                timeout=300)
    assert (through_sh.returncode, through_py.returncode) == (2, 2)
    assert _error_lines(through_py) == _error_lines(through_sh)


def test_run_from_another_folder_says_where_it_looked(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = train_sh(elsewhere)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert "error: --model_family is required (for example sdxl); see --list_model_families" in lines
    assert lines[-1] == (
        f"error: no config file was read: {elsewhere / 'config' / 'config.json'} does not exist; run from "
        "your project folder (the one holding config/) or set CONFIG_PATH=path/to/config.json"
    )
    # ... and CONFIG_PATH is the way to name it from there.
    named = train_sh(elsewhere, "--print_config",
                     env=user_env(CONFIG_PATH=str(project / "config" / "config.json")))
    assert named.returncode == 0, named.stderr[-2000:]


_CRASH = """
import simpletuner.training.loss as loss

def _broken(*args, **kwargs):
    raise RuntimeError("simulated bug in the loss")

loss.weighted_loss = _broken
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_crash_is_one_line_and_exit_1_with_the_traceback_in_debug_log(
    project: Path, tmp_path: Path, processes: str
) -> None:
    # A bug, simulated: sitecustomize (imported by every Python process) breaks the loss.
    env = _with_hook(user_env(TRAINING_NUM_PROCESSES=processes, OMP_NUM_THREADS="1"), tmp_path / "hook", _CRASH)
    result = train_sh(project, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    crash_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert crash_lines == [
        "error: training crashed with RuntimeError: simulated bug in the loss; the traceback is in "
        "output/debug.log (a bug: please report it with that file)"
    ] * int(processes)
    log = (project / "output" / "debug.log").read_text()
    assert "Traceback" in log and 'raise RuntimeError("simulated bug in the loss")' in log
