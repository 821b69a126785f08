"""Several machines: config.env's launch variables become ``accelerate launch`` flags.

The flags are read back through accelerate's own parser and its own handling
of the config file, so a test passes only when accelerate would launch what
the variables say.  Precedence: ACCELERATE_EXTRA_ARGS > a variable the user
set > the accelerate config file > our defaults.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from simpletuner.cli.launch import _root_failure, accelerate_arguments, needs_launcher
from simpletuner.config.environment import launch_settings
from simpletuner.errors import ConfigError
from train_sh import tiny_project, train_sh, user_env

NODE_1 = {"TRAINING_NUM_PROCESSES": "4", "TRAINING_NUM_MACHINES": "2", "TRAINING_MACHINE_RANK": "1",
          "TRAINING_MAIN_PROCESS_IP": "10.0.0.1", "TRAINING_MAIN_PROCESS_PORT": "29555"}


def _launcher_args(env: dict[str, str], cores: int = 8):
    """What accelerate makes of our arguments, after reading its config file as ``accelerate launch`` does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = accelerate_arguments(launch_settings(env), ["--seed", "1"], cores)
    args, _defaults, _mp_from_file = _validate_launch_command(launch_command_parser().parse_args(argv))
    return argv, args


def test_the_machine_variables_reach_the_launcher(tmp_path: Path) -> None:
    argv, args = _launcher_args({**NODE_1, "HF_HOME": str(tmp_path)})
    assert (args.num_processes, args.num_machines, args.machine_rank) == (4, 2, 1)
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29555)
    assert args.multi_gpu
    # accelerate's own count per machine, and the cores shared among this machine's 2 processes
    assert int(args.num_processes) // int(args.num_machines) == 2
    assert args.num_cpu_threads_per_process == 4
    assert argv[-3:] == ["simpletuner.cli.train", "--seed", "1"]


def test_a_flag_in_accelerate_extra_args_wins_and_is_passed_once(tmp_path: Path) -> None:
    env = {**NODE_1, "HF_HOME": str(tmp_path),
           "ACCELERATE_EXTRA_ARGS": "--num-machines 4 --machine_rank=3 --main_process_port 1234 --rdzv_backend c10d"}
    argv, args = _launcher_args(env)
    assert (args.num_machines, args.machine_rank, args.main_process_port) == (4, 3, 1234)
    assert args.rdzv_backend == "c10d"
    flags = [a.split("=")[0].replace("-", "_") for a in argv if a.startswith("--")]
    for flag in ("__num_machines", "__machine_rank", "__main_process_port"):
        assert flags.count(flag) == 1, argv
    # ours still fill what the user did not give
    assert (args.num_processes, args.main_process_ip) == (4, "10.0.0.1")


def test_the_accelerate_config_file_fills_what_the_variables_leave_unset(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 2\nmachine_rank: 1\n"
        "main_process_ip: 10.9.9.9\nmain_process_port: 4242\nnum_processes: 6\nmixed_precision: bf16\n"
        "rdzv_backend: static\nsame_network: true\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "ACCELERATE_CONFIG_PATH": str(config)}
    settings = launch_settings(env)
    assert needs_launcher(settings)  # the file says how many processes: accelerate must start them
    argv, args = _launcher_args(env)
    assert f"--config_file={config}" in argv
    assert (args.num_processes, args.num_machines, args.machine_rank) == (6, 2, 1)
    assert (args.main_process_ip, args.main_process_port, args.mixed_precision) == ("10.9.9.9", 4242, "bf16")
    # a variable the user set wins over the file
    _argv, args = _launcher_args({**env, "TRAINING_NUM_PROCESSES": "4", "TRAINING_MAIN_PROCESS_PORT": "5000"})
    assert (args.num_processes, args.main_process_port, args.num_machines) == (4, 5000, 2)


def test_accelerates_default_config_location_is_used_when_present(tmp_path: Path) -> None:
    assert launch_settings({"HF_HOME": str(tmp_path)}).accelerate_config is None
    default = tmp_path / "accelerate" / "default_config.yaml"
    default.parent.mkdir()
    default.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 3\n")
    assert launch_settings({"HF_HOME": str(tmp_path)}).accelerate_config == default
    _argv, args = _launcher_args({"HF_HOME": str(tmp_path)})
    assert args.num_processes == 3


@pytest.mark.parametrize("env, message", [
    ({"TRAINING_NUM_MACHINES": "two"}, "TRAINING_NUM_MACHINES=two: not a whole number of at least 1"),
    ({"TRAINING_NUM_MACHINES": "2", "TRAINING_NUM_PROCESSES": "3", "TRAINING_MAIN_PROCESS_IP": "10.0.0.1"},
     "TRAINING_NUM_PROCESSES=3 cannot be split evenly over TRAINING_NUM_MACHINES=2"),
    ({"TRAINING_NUM_MACHINES": "2", "TRAINING_NUM_PROCESSES": "2", "TRAINING_MACHINE_RANK": "2",
      "TRAINING_MAIN_PROCESS_IP": "10.0.0.1"}, "TRAINING_MACHINE_RANK=2: machines are numbered 0 to 1"),
    ({"TRAINING_NUM_MACHINES": "2", "TRAINING_NUM_PROCESSES": "2"},
     "TRAINING_NUM_MACHINES=2 needs TRAINING_MAIN_PROCESS_IP"),
    ({"TRAINING_MAIN_PROCESS_IP": "10.0.0.1:29500"}, "TRAINING_MAIN_PROCESS_IP=10.0.0.1:29500: not an IP address"),
    ({"TRAINING_MAIN_PROCESS_PORT": "70000"}, "TRAINING_MAIN_PROCESS_PORT=70000: not a TCP port"),
    ({"ACCELERATE_CONFIG_PATH": "/nowhere/cluster.yaml"}, "ACCELERATE_CONFIG_PATH=/nowhere/cluster.yaml: no such file"),
])
def test_bad_machine_variables_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        launch_settings(env)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_the_main_process_ip_may_come_from_accelerate_extra_args() -> None:
    settings = launch_settings({"TRAINING_NUM_MACHINES": "2", "TRAINING_NUM_PROCESSES": "2",
                                "ACCELERATE_EXTRA_ARGS": "--main_process_ip head.cluster"})
    assert settings.num_machines == 2 and settings.main_process_ip is None


@pytest.fixture
def project(tmp_path: Path, tiny_sdxl: Path) -> Path:
    return tiny_project(tmp_path / "project", tiny_sdxl, max_train_steps=2)


def test_a_machine_setting_in_config_env_is_one_line_naming_the_file(project: Path) -> None:
    env_file = project / "config" / "config.env"
    env_file.write_text(env_file.read_text() + "TRAINING_NUM_MACHINES=2\nTRAINING_NUM_PROCESSES=2\n")
    result = train_sh(project)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "error: TRAINING_NUM_MACHINES=2 needs TRAINING_MAIN_PROCESS_IP, the address of the machine with "
        "TRAINING_MACHINE_RANK=0 that the others can reach; set it in config.env on every machine"
    ]


def test_a_busy_port_on_the_main_machine_is_one_line_before_anything_starts(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = train_sh(project, env=user_env(
            TRAINING_NUM_PROCESSES="2", TRAINING_NUM_MACHINES="2", TRAINING_MACHINE_RANK="0",
            TRAINING_MAIN_PROCESS_IP="127.0.0.1", TRAINING_MAIN_PROCESS_PORT=str(port)), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"error: TRAINING_MAIN_PROCESS_PORT={port} is already in use on this machine (another run?); choose a "
        "free port and set the same one on every machine"
    ]
    assert not (project / "output").exists()


def test_the_killed_process_is_named_not_the_survivor_that_lost_contact(tmp_path: Path) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failure(rank: int, exitcode: int) -> ProcessFailure:
        # no error file: the timestamp is now, in whole seconds, so the three tie as they do in a real run
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode,
                              error_file=str(tmp_path / f"none{rank}.json"))

    assert _root_failure({0: failure(0, 5), 1: failure(1, -9), 2: failure(2, 1)})[0] == 1
    assert _root_failure({0: failure(0, 1), 1: failure(1, -9)})[0] == 1
    assert _root_failure({0: failure(0, 5), 1: failure(1, 1)})[0] == 1  # the crash, not the one that lost contact
    assert _root_failure({0: failure(0, 5), 1: failure(1, 5)})[0] == 0  # the cause was on another machine


def test_a_misspelt_variable_in_config_env_is_named_with_the_right_spelling() -> None:
    """TRAINING_NUM_PROCESS=2 (no S) used to be ignored: the run started on one process."""
    env = {"TRAINING_NUM_PROCESS": "2", "HF_HOME": "/data/hf", "ACCELERATE_MIXED_PRECISION": "bf16",
           "SIMPLETUNER_ENV_FILE": "config/config.env",
           "SIMPLETUNER_ENV_FILE_VARS": "TRAINING_NUM_PROCESS HF_HOME ACCELERATE_MIXED_PRECISION"}
    with pytest.raises(ConfigError) as raised:
        launch_settings(env)
    assert str(raised.value) == ("config/config.env: unknown variable TRAINING_NUM_PROCESS, nothing reads it; "
                                 "did you mean TRAINING_NUM_PROCESSES?")
    # The same name set in the shell, not in config.env, is none of our business.
    assert launch_settings({**env, "SIMPLETUNER_ENV_FILE_VARS": "HF_HOME ACCELERATE_MIXED_PRECISION"}).num_processes == 1
