"""``train.sh``'s Python half: check the launch settings, then train.

One process on one machine with no ``ACCELERATE_EXTRA_ARGS`` (and no
accelerate config file deciding otherwise) trains right here (what
``python train.py`` does).  Anything else, one machine or several (see
documentation/DISTRIBUTED.md), goes through accelerate's launcher, whose own
failures would otherwise end in a ``CalledProcessError`` or ``ChildFailedError``
traceback: the training processes have already said what went wrong, so this
process only passes on their exit code (2 configuration, 1 crash, 5 lost
contact with another process, 130/143 signals) and adds a line naming the
process when one died without a word.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any, Optional, Sequence

from simpletuner.config.environment import flag_names
from simpletuner.errors import LOST_CONTACT_EXIT_CODE, USER_ERROR_EXIT_CODE, ConfigError, UserError

TRAINING_MODULE = "simpletuner.cli.train"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from simpletuner.config.environment import launch_settings

    try:
        settings = launch_settings(os.environ)
        if not needs_launcher(settings):
            from simpletuner.cli.train import main as train

            return train(argv)
        if _check_config(argv).dry_run:  # nothing trains: this one process reports for all of them
            from simpletuner.cli.train import main as train

            return train(argv)
        _check_port(settings)
    except UserError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted before training started", file=sys.stderr)
        return 130
    return launch_processes(settings, argv)


def needs_launcher(settings: Any) -> bool:
    """Train through ``accelerate launch`` unless one process on one machine is all that was asked for.

    An accelerate config file counts as asking when TRAINING_NUM_PROCESSES is
    not set: the file then says how many processes to start.
    """
    return (settings.num_processes > 1 or settings.num_machines > 1 or bool(settings.accelerate_args)
            or (settings.accelerate_config is not None and "TRAINING_NUM_PROCESSES" not in settings.given))


def _check_config(argv: Sequence[str]) -> Any:
    """Configuration mistakes once, here, rather than once per process after they start; the config."""
    from simpletuner.config.loader import load_config

    return load_config(argv)


def _check_port(settings: Any) -> None:
    """The main machine's port must be free, or the other machines would wait for a run that never starts."""
    if settings.num_machines <= 1 or settings.machine_rank != 0 or settings.main_process_port is None:
        return
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", settings.main_process_port))
        except OSError:
            raise ConfigError(
                f"TRAINING_MAIN_PROCESS_PORT={settings.main_process_port} is already in use on this machine "
                "(another run?); choose a free port and set the same one on every machine"
            ) from None


def accelerate_arguments(settings: Any, argv: Sequence[str], cores: int) -> list[str]:
    """``accelerate launch`` arguments for the training module with ``argv``.

    Precedence, highest first: a flag in ACCELERATE_EXTRA_ARGS (ours is then
    left out, never passed twice), a launch variable the user set, the
    accelerate config file, our defaults (left out when a config file is used,
    so the file decides).
    """
    extra = list(settings.accelerate_args)
    taken = flag_names(extra)
    from_file = settings.accelerate_config is not None or "config_file" in taken
    ours: list[str] = []

    def add(flag: str, value: Any, variable: Optional[str] = None) -> None:
        """Our ``--flag=value`` unless the user gave the flag; a default only when no config file decides."""
        if flag in taken or value is None:
            return
        if from_file and (variable is None or variable not in settings.given):
            return
        ours.append(f"--{flag}" if value is True else f"--{flag}={value}")

    if settings.accelerate_config is not None and "config_file" not in taken:
        ours.append(f"--config_file={settings.accelerate_config}")
    if settings.num_processes > 1 and not taken & _DISTRIBUTED_TYPE_FLAGS:
        add("multi_gpu", True)  # several processes (on one machine or several)
    add("num_processes", settings.num_processes, "TRAINING_NUM_PROCESSES")
    add("num_machines", settings.num_machines, "TRAINING_NUM_MACHINES")
    if settings.num_machines > 1:
        add("machine_rank", settings.machine_rank, "TRAINING_MACHINE_RANK")
        add("main_process_ip", settings.main_process_ip, "TRAINING_MAIN_PROCESS_IP")
        # Unset: accelerate's (and torch's) usual 29500, the same on every machine.
        add("main_process_port", settings.main_process_port, "TRAINING_MAIN_PROCESS_PORT")
    else:
        # Any free port, so two runs on one machine do not collide.
        add("main_process_port", settings.main_process_port if settings.main_process_port else 0,
            "TRAINING_MAIN_PROCESS_PORT")
    # accelerate pins each process to one CPU thread unless told otherwise; share
    # the cores instead (an OMP_NUM_THREADS set by the user wins).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // settings.processes_per_machine))
    if "num_cpu_threads_per_process" not in taken:
        ours.append(f"--num_cpu_threads_per_process={threads}")
    # Only silences the launcher: the trainer passes the config's
    # --mixed_precision to Accelerator, which takes precedence.
    add("mixed_precision", "no")
    add("dynamo_backend", settings.dynamo_backend or "no", "TRAINING_DYNAMO_BACKEND")
    return [*extra, *ours, "--module", TRAINING_MODULE, *argv]


# accelerate launch takes one of these; --multi_gpu beside another would be refused.
_DISTRIBUTED_TYPE_FLAGS = {"multi_gpu", "cpu", "tpu", "use_deepspeed", "use_fsdp", "use_megatron_lm", "config_file"}


def launch_processes(settings: Any, argv: Sequence[str]) -> int:
    """Run accelerate's launcher here; return the exit code of the processes it started."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    _quiet_launcher_logs()
    args = launch_command_parser().parse_args(accelerate_arguments(settings, argv, os.cpu_count() or 1))
    # Leave time for the checkpoint a signal asks for before the launcher kills the processes.
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    with _ForwardSignals():
        try:
            launch_command(args)
        except subprocess.CalledProcessError as error:  # accelerate's single-process launcher
            return _exit_code(error.returncode, None)
        except Exception as error:
            return _from_elastic(error)
    return 0


def _from_elastic(error: Exception) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(error, SignalException):
        # The launcher was signalled and passed it on; the processes have
        # checkpointed (or stopped) and said so.
        return 128 + int(error.sigval)
    if isinstance(error, ChildFailedError):
        rank, failure = _root_failure(error.failures)
        return _exit_code(failure.exitcode, rank, several=True)
    raise error


def _root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The process whose failure stopped the run (by global rank).

    torch orders failures by a timestamp in whole seconds, so the survivors of
    a killed process, which stop when their next collective fails, often tie
    with it; a process that stopped for losing contact is never the cause.
    """
    causes = {rank: f for rank, f in failures.items() if f.exitcode != LOST_CONTACT_EXIT_CODE} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, causes[r].exitcode >= 0, r))
    return rank, causes[rank]


def _exit_code(returncode: int, rank: Optional[int], several: bool = False) -> int:
    """A process killed by a signal reports -N; the shell's convention is 128 + N."""
    if returncode >= 0:
        return returncode  # the process printed its own line
    name = signal.Signals(-returncode).name
    which = "the training process" if rank is None else f"training process {rank}"
    hint = " (often the system running out of memory)" if -returncode == signal.SIGKILL else ""
    others = "; the other processes were stopped" if several else ""
    print(f"error: {which} was killed by {name}{hint}{others}; run again with --resume_from_checkpoint latest "
          "to continue from the last checkpoint", file=sys.stderr)
    return 128 - returncode


def _quiet_launcher_logs() -> None:
    """torch's launcher logs every shutdown step; our processes already said what happened."""
    import torch.distributed.run  # noqa: F401  (creates the launcher's loggers, each with its own level)

    prefixes = ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.CRITICAL)


class _ForwardSignals:
    """Pass SIGINT/SIGTERM on to the training processes, and keep waiting for them.

    torch's multi-process launcher installs its own forwarding while it runs;
    this covers accelerate's single-process launcher, which would die and
    leave its process running.  A terminal's Ctrl-C reaches both processes:
    the trainer counts the two copies as one (see training/stop.py).
    """

    def __enter__(self) -> "_ForwardSignals":
        self._previous = {signum: signal.signal(signum, self._forward) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @staticmethod
    def _forward(signum: int, frame: Any) -> None:
        import psutil

        for child in psutil.Process().children():
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


if __name__ == "__main__":
    raise SystemExit(main())
