"""The dry run's report, section by section; each section adds its problems to one list.

A section that fails does not hide the others: an empty dataset still shows
the memory and disk figures, so one dry run lists every reason the run would
not start.  Sections that need an earlier one's result (the caches need the
datasets) say why they were not checked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from simpletuner.errors import USER_ERROR_EXIT_CODE, UserError

Say = Callable[[str], None]


class _Report:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.problems: list[str] = []

    def section(self, title: str) -> None:
        self.say(f"\n== {title}")

    def line(self, text: str) -> None:
        for part in text.splitlines():
            self.say(f"  {part}")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.line(f"PROBLEM: {text}")


def dry_run(config: Any, num_processes: int = 1, say: Say = print, device: Optional[torch.device] = None) -> int:
    """Report what the run would do, load no weights; 0 when it would start, 2 when it would not."""
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.logs import quiet_libraries

    quiet_libraries()
    report = _Report(say)
    say("dry run: everything up to loading the model's weights; nothing is loaded, trained or changed")
    _config_section(report, config)
    report.section("checks")
    report.line("options, their combinations and the quantisation support matrix: passed")
    family = get_family(config.model_family, config)
    source = ModelSource.from_config(config, family)
    model_ok = _checked(report, lambda: source.check(family),
                        f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}")
    backends = _checked(report, lambda: _load_backends(config), f"--data_backend_config={config.data_backend_config}")
    online_trackers = [name for name in config.report_to or [] if name in ("wandb", "comet_ml")]
    if online_trackers:
        from simpletuner.trackers.credentials import check_tracker_credentials

        _checked(report, lambda: check_tracker_credentials(config),
                 f"--report_to={','.join(online_trackers)} credentials")
    if config.push_to_hub:
        report.line("Hub token: not checked here (the dry run reaches no network); train.py checks it first")
    data = _datasets_section(report, config, backends, num_processes) if backends else None
    if data is not None and model_ok:
        report.section("caches")
        for line in _caches(report, family, source, data, config):
            report.line(line)
    total_steps = _steps_section(report, config, data, num_processes)
    if model_ok:
        _guarded(report, lambda: _memory_section(report, config, family, source, data, device or _training_device()))
        _guarded(report, lambda: _disk_section(report, config, family, source, total_steps))
    return _verdict(report)


def _guarded(report: _Report, section: Callable[[], None]) -> None:
    """A section whose check fails records the reason; the sections after it still report."""
    try:
        section()
    except UserError as error:
        report.problem(str(error))


def _training_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _checked(report: _Report, check: Callable[[], Any], what: str) -> Any:
    """Run ``check``; its result (True for None) when it passed, None after recording why it did not."""
    try:
        result = check()
    except UserError as error:
        report.problem(str(error))
        return None
    report.line(f"{what}: passed")
    return True if result is None else result


def _load_backends(config: Any) -> Any:
    from simpletuner.data.pipeline import load_backends

    return load_backends(config)


def _config_section(report: _Report, config: Any) -> None:
    from simpletuner.config.model import redacted_values
    from simpletuner.config.options import OPTIONS_BY_NAME

    values = redacted_values(config)
    changed = {name: value for name, value in values.items()
               if value != OPTIONS_BY_NAME[name].default and name != "dry_run"}
    report.section(f"config (secrets hidden; the {len(values) - len(changed)} options at their defaults "
                   "left out; --print_config shows every one)")
    for name in sorted(changed):
        report.line(f"{name} = {json.dumps(changed[name], default=str)}")


def _datasets_section(report: _Report, config: Any, backends: Any, num_processes: int) -> Any:
    from simpletuner.data.pipeline import prepare_training_data

    report.section("datasets")
    try:
        data = prepare_training_data(config, backends, num_processes, show_progress=False, dry_run=True)
    except UserError as error:
        report.problem(str(error))
        for dataset in backends.image_datasets:
            report.line(_why_nothing(dataset))
        return None
    report.line(data.table(epoch_line=False))
    for note in data.notes:
        report.line(f"note: {note.text}")
    return data


def _why_nothing(dataset: Any) -> str:
    """An empty dataset's most likely cause, in words (SimpleTuner's "No images were discovered")."""
    folder = dataset.instance_data_dir
    if dataset.s3 is not None or folder is None:
        return f"dataset {dataset.id!r}: see the skip reasons above"
    path = Path(folder)
    if not path.exists():
        return f"dataset {dataset.id!r}: {folder} does not exist (instance_data_dir is read relative to {Path.cwd()})"
    files = [p for p in path.rglob("*") if p.is_file()]
    if not files:
        return f"dataset {dataset.id!r}: {folder} exists but holds no files"
    kinds = sorted({p.suffix.lower() or "(no extension)" for p in files})[:8]
    return (f"dataset {dataset.id!r}: {folder} holds {len(files)} file(s) but none was a usable image "
            f"(extensions seen: {', '.join(kinds)}); see the skip reasons above")


def _caches(report: _Report, family: Any, source: Any, data: Any, config: Any) -> list[str]:
    from simpletuner.dryrun.caches import cache_lines

    try:
        return cache_lines(family, source, data, config)
    except UserError as error:
        report.problem(str(error))
        return []


def _steps_section(report: _Report, config: Any, data: Any, num_processes: int) -> int:
    """Steps and epochs; the steps (0 when the datasets could not be counted)."""
    from simpletuner.training.summary import epoch_line
    from simpletuner.training.trainer import total_training_steps

    report.section("steps")
    if data is None:
        report.line("not counted: the datasets could not be planned (see above)")
        return config.max_train_steps
    batches = data.report.batches_per_epoch
    try:
        steps = total_training_steps(config, batches)
    except UserError as error:
        report.problem(str(error))
        return 0
    report.line(epoch_line(config, batches, num_processes, steps))
    epochs = math.ceil(steps * config.gradient_accumulation_steps / batches) if batches else 0
    report.line(f"{epochs} epoch(s); a checkpoint every {config.checkpointing_steps} steps "
                f"({steps // config.checkpointing_steps} in all"
                + (f", the last {config.checkpoints_total_limit} kept)" if config.checkpoints_total_limit else ")"))
    return steps


def _memory_section(report: _Report, config: Any, family: Any, source: Any, data: Any, device: torch.device) -> None:
    from simpletuner.config.model import replace
    from simpletuner.errors import ConfigError
    from simpletuner.memory.report import (
        available_memory, check_fits, estimate_for_run, largest_bucket, planned_bucket, size, summary_lines,
    )

    report.section("memory")
    bucket = largest_bucket(data.report.counts) if data is not None else None
    if bucket is None:
        try:
            bucket = planned_bucket(config)
        except UserError:  # the dataset config was refused above; --resolution stands in
            try:
                bucket = planned_bucket(replace(config, data_backend_config=None))
            except UserError:  # --resolution itself was the reason, already reported
                report.line("not estimated: no training size could be read (see the problem above)")
                return
    estimate = estimate_for_run(config, family, source, bucket)
    for line in summary_lines(estimate, config):
        report.line(line)
    available, what = available_memory(device, config.memory_limit_gb)
    where = "a CPU run: the model trains in system RAM" if device.type == "cpu" else f"training on {device}"
    report.line(f"{where}; {what}: {size(available)}")
    if estimate is None:
        return
    try:
        check_fits(estimate, config, device)
    except ConfigError as error:
        report.problem(str(error))
        return
    from simpletuner.memory.report import required_memory

    needed = required_memory(estimate, device)
    verdict = "fits" if needed <= available else "does not fit, but --skip_memory_check starts anyway"
    report.line(f"needs {size(needed)}: {verdict}")


def _disk_section(report: _Report, config: Any, family: Any, source: Any, total_steps: int) -> None:
    from simpletuner.dryrun.space import space_lines, space_needed

    report.section("disk")
    lines, problem = space_lines(Path(config.output_dir), space_needed(config, family, source, total_steps))
    for line in lines:
        report.line(line)
    if problem:
        report.problem(problem)


def _verdict(report: _Report) -> int:
    if not report.problems:
        report.say("\ndry run: the run would start (train without --dry_run)")
        return 0
    report.say("\ndry run: the run would NOT start; the reasons follow on stderr")
    for problem in report.problems:
        for line in problem.splitlines():
            sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    return USER_ERROR_EXIT_CODE
