"""``train.py``: load and validate the config, then train.

Exit codes, each with a short message on stderr and no traceback:

* 2: a user mistake (``UserError``), one line saying what to fix;
* 3: output that could not be written (a full disk): one line naming what,
  the free space and the last complete checkpoint;
* 1: a crash (a bug): one line; the traceback goes to debug.log in the
  output folder (to the console only when there is no debug.log yet, or at
  SIMPLETUNER_LOG_LEVEL=DEBUG);
* 4: training finished but publishing to the Hub failed (see
  publishing/session.py): one line naming what, why, and the command that
  retries it;
* 5: another process of a multi-process run died or stopped answering
  (training/rank_health.py): one line naming this process and how to resume;
* 130 / 143: stopped by SIGINT / SIGTERM (see training/stop.py): in the
  training loop after saving a checkpoint, elsewhere at once.

The codes are listed in documentation/EXIT_CODES.md.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from simpletuner.errors import (
    LOST_CONTACT_EXIT_CODE,
    OUTPUT_WRITE_EXIT_CODE,
    PUBLISH_FAILED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    OutputWriteError,
    PublishError,
    UserError,
)

CRASH_EXIT_CODE = 1
_STOPPED_DURING = {
    "start-up": "before training started",
    "caching": "while caching; the cache entries written so far are kept and the next run reuses them",
    "training": "at once; work since the last checkpoint is lost: run again with "
                "--resume_from_checkpoint latest to continue from it",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except (UserError, OutputWriteError, PublishError) as error:
        code = (OUTPUT_WRITE_EXIT_CODE if isinstance(error, OutputWriteError)
                else PUBLISH_FAILED_EXIT_CODE if isinstance(error, PublishError) else USER_ERROR_EXIT_CODE)
        for line in str(error).splitlines():
            _say(f"error: {line}")
        _leave_if_distributed(code)  # here, while the traceback still holds the trainer
        return code
    except KeyboardInterrupt:  # before the run's own handlers are installed
        _say("interrupted before training started")
        _leave_if_distributed(130)
        return 130
    except BaseException as error:
        from simpletuner.training.rank_health import LostContact
        from simpletuner.training.stop import RunStopped, StoppedAtOnce, exit_code, signal_name

        if isinstance(error, LostContact):  # the failed process's own console names it
            code = LOST_CONTACT_EXIT_CODE
            _say(f"error: {error}")
        elif isinstance(error, RunStopped):  # the trainer has said where it stopped
            code = exit_code(error.signum)
        elif isinstance(error, StoppedAtOnce):
            code = exit_code(error.signum)
            _say(f"stopped by {signal_name(error.signum)} {_STOPPED_DURING.get(error.phase, '')}".rstrip())
        elif isinstance(error, Exception):
            code = CRASH_EXIT_CODE
            _report_crash(error)
        else:  # SystemExit and the like keep their own meaning
            raise
        _leave_if_distributed(code)
        return code


def _say(line: str) -> None:
    """One line on stderr in one write: several processes share the console, and
    print's separate write of the newline lets their lines run together."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _report_crash(error: Exception) -> None:
    """One line on the console; the traceback in debug.log when there is one."""
    import logging
    import traceback

    from simpletuner.logs import log_file_path

    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    summary = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    log_file = log_file_path()
    if log_file is not None and log_file.is_relative_to(os.getcwd()):
        log_file = log_file.relative_to(os.getcwd())
    if log_file is None:
        traceback.print_exception(error, file=sys.stderr)
        _say(f"error: training crashed with {summary} (a bug: please report it with the traceback above)")
        return
    # DEBUG records reach debug.log, and the console only at SIMPLETUNER_LOG_LEVEL=DEBUG.
    logging.getLogger("simpletuner.crash").debug("training crashed", exc_info=error)
    _say(f"error: training crashed with {summary}; the traceback is in {log_file} "
         "(a bug: please report it with that file)")


def _leave_if_distributed(code: int) -> None:
    """End a multi-process run without tearing down its process group.

    Freeing the DDP reducer destroys the gloo process group, which joins a
    worker thread that may be waiting for the GIL the freeing thread holds:
    the process then never exits.  Everything worth keeping (weights,
    checkpoints, trackers, logs) is written and flushed by now.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(argv: list[str]) -> int:
    from simpletuner.config.environment import launch_settings
    from simpletuner.config.loader import load_config
    from simpletuner.config.model import option_values, redacted_values
    from simpletuner.config.options import OPTIONS_BY_NAME

    config = load_config(argv, check_datasets=True)
    if config.print_config:
        for line in config.ignored:
            print(f"warning: {line}", file=sys.stderr)
        print(json.dumps(redacted_values(config), indent=2, sort_keys=True))
        return 0
    if config.list_model_families:
        _print_families()
        return 0
    settings = launch_settings(os.environ)
    from simpletuner.logs import setup_logging

    from simpletuner.publishing.webhooks import webhook_secrets

    secrets = [str(v) for k, v in option_values(config).items() if OPTIONS_BY_NAME[k].secret and v]
    secrets += webhook_secrets(config.webhook_config)  # a webhook URL carries its endpoint's credentials
    secrets += [os.environ["HF_TOKEN"]] if os.environ.get("HF_TOKEN") else []
    # Before torch is imported: library import chatter stays off the console.
    setup_logging(os.environ, secrets)
    if config.estimate_memory:
        _print_memory_estimate(config)
        return 0
    if config.dry_run:
        if int(os.environ.get("RANK", "0")) != 0:  # started by a launcher anyway: rank 0 reports for all
            return 0
        from simpletuner.dryrun.run import dry_run

        return dry_run(config, settings.num_processes)
    from simpletuner.logs import quiet_libraries
    from simpletuner.training.progress import show_bar
    from simpletuner.training.rank_health import lost_contact_reported
    from simpletuner.training.stop import StopSignals
    from simpletuner.training.trainer import Trainer

    if int(os.environ.get("RANK", "0")) == 0:  # once per run, not once per process
        from simpletuner.config.inert import log_ignored_options

        log_ignored_options(config)
    quiet_libraries()

    with StopSignals() as stop:
        trainer = Trainer(config, show_progress=show_bar(settings.progress, sys.stderr.isatty()), stop=stop)
        with lost_contact_reported(config):
            trainer.run()
        _leave_if_distributed(0)  # before ``trainer`` is freed; see there
    return 0


def _print_memory_estimate(config: object) -> None:
    """The start-up summary's memory lines, from configs and file headers only."""
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.logs import quiet_libraries
    from simpletuner.memory.report import planned_bucket, estimate_for_run, summary_lines

    quiet_libraries()
    family = get_family(config.model_family, config)
    source = ModelSource.from_config(config, family)
    source.check(family)
    for line in summary_lines(estimate_for_run(config, family, source, planned_bucket(config)), config):
        print(line)


def _print_families() -> None:
    from simpletuner.config.options import OPTIONS_BY_NAME
    from simpletuner.families.registry import available_families

    option = OPTIONS_BY_NAME["model_family"]
    ready = set(available_families())
    for name in option.choices:
        print(f"{name}\t{'available' if name in ready else 'not implemented yet'}")


if __name__ == "__main__":
    raise SystemExit(main())
