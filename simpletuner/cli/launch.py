"""``train.sh``'s Python half: check the launch settings, then train.

One process with no ``ACCELERATE_EXTRA_ARGS`` trains right here (what
``python train.py`` does).  Anything else goes through accelerate's launcher,
whose own failures would otherwise end in a ``CalledProcessError`` or
``ChildFailedError`` traceback: the training processes have already said what
went wrong, so this process only passes on their exit code (2 configuration,
1 crash, 130/143 signals) and adds a line when a process died without a word.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any, Optional, Sequence

from simpletuner.errors import USER_ERROR_EXIT_CODE, UserError

TRAINING_MODULE = "simpletuner.cli.train"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from simpletuner.config.environment import launch_settings

    try:
        settings = launch_settings(os.environ)
        if settings.num_processes == 1 and not settings.accelerate_args:
            from simpletuner.cli.train import main as train

            return train(argv)
        if _check_config(argv).dry_run:  # nothing trains: this one process reports for all of them
            from simpletuner.cli.train import main as train

            return train(argv)
    except UserError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted before training started", file=sys.stderr)
        return 130
    return launch_processes(settings, argv)


def _check_config(argv: Sequence[str]) -> Any:
    """Configuration mistakes once, here, rather than once per process after they start; the config."""
    from simpletuner.config.loader import load_config

    return load_config(argv)


def accelerate_arguments(settings: Any, argv: Sequence[str], cores: int) -> list[str]:
    """``accelerate launch`` arguments for the training module with ``argv``."""
    extra = list(settings.accelerate_args)
    if settings.num_processes > 1 and "--multi_gpu" not in extra:
        extra.insert(0, "--multi_gpu")  # several processes on one machine
    if not any(arg.startswith("--main_process_port") for arg in extra):
        extra.append("--main_process_port=0")  # any free port: two runs on one machine do not collide
    # accelerate pins each process to one CPU thread unless told otherwise; share
    # the cores instead (an OMP_NUM_THREADS set by the user wins).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // settings.num_processes))
    return [
        *extra,
        f"--num_processes={settings.num_processes}",
        "--num_machines=1",
        f"--num_cpu_threads_per_process={threads}",
        # Only silences the launcher: the trainer passes the config's
        # --mixed_precision to Accelerator, which takes precedence.
        "--mixed_precision=no",
        f"--dynamo_backend={settings.dynamo_backend or 'no'}",
        "--module", TRAINING_MODULE, *argv,
    ]


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
        rank, failure = error.get_first_failure()
        return _exit_code(failure.exitcode, rank)
    raise error


def _exit_code(returncode: int, rank: Optional[int]) -> int:
    """A process killed by a signal reports -N; the shell's convention is 128 + N."""
    if returncode >= 0:
        return returncode  # the process printed its own line
    name = signal.Signals(-returncode).name
    which = "the training process" if rank is None else f"training process {rank}"
    hint = " (often the system running out of memory)" if -returncode == signal.SIGKILL else ""
    print(f"error: {which} was killed by {name}{hint}", file=sys.stderr)
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
