"""``train.py``: load and validate the config, then train.

User mistakes (``UserError``) end the process with one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from simpletuner.errors import USER_ERROR_EXIT_CODE, UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except UserError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        _leave_if_distributed(USER_ERROR_EXIT_CODE)  # here, while the traceback still holds the trainer
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted; resume with --resume_from_checkpoint latest", file=sys.stderr)
        _leave_if_distributed(130)
        return 130


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
    from simpletuner.config.loader import load_config
    from simpletuner.config.model import option_values, redacted_values
    from simpletuner.config.options import OPTIONS_BY_NAME

    config = load_config(argv)
    if config.print_config:
        print(json.dumps(redacted_values(config), indent=2, sort_keys=True))
        return 0
    if config.list_model_families:
        _print_families()
        return 0
    if config.estimate_memory:
        _print_memory_estimate(config)
        return 0
    from simpletuner.logs import setup_logging

    secrets = [str(v) for k, v in option_values(config).items() if OPTIONS_BY_NAME[k].secret and v]
    setup_logging(os.environ, secrets)
    from simpletuner.logs import quiet_libraries
    from simpletuner.training.trainer import Trainer

    quiet_libraries()

    trainer = Trainer(config, show_progress=sys.stderr.isatty() or bool(os.environ.get("SIMPLETUNER_PROGRESS")))
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
    source.check()
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
