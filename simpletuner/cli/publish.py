"""``python -m simpletuner.publish``: push an existing results folder to the Hub.

For runs trained offline, or whose push failed (the run prints this command).
It refreshes the model card for the repository it pushes to, uploads the
checkpoints when asked, then the weights, card and latest validation images,
with the same retries as a training run.  Exit codes: 0 published, 2 a user
mistake (no such folder, no or rejected token), 4 the upload failed again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from simpletuner.errors import PUBLISH_FAILED_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError

FLAG = "simpletuner.publish"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpletuner.publish",
        description="Upload a SimpleTuner results folder (weights, model card, validation images) to the "
                    "Hugging Face Hub.",
    )
    parser.add_argument("--output_dir", required=True, help="The results folder (it holds training_config.json).")
    parser.add_argument("--hub_model_id", help="Repository to push to (user/name or name); defaults to the "
                        "one the run was trained with, else the folder's name.")
    parser.add_argument("--hub_token", help="Hub token; unset uses HF_TOKEN or the token saved by hf auth login.")
    parser.add_argument("--push_checkpoints_to_hub", action="store_true",
                        help="Also upload every checkpoint-N folder, to checkpoints/checkpoint-N/.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from simpletuner.logs import setup_logging

    setup_logging(os.environ, [s for s in (args.hub_token, os.environ.get("HF_TOKEN")) if s])
    try:
        return _publish(args)
    except UserError as error:
        for line in str(error).splitlines():
            _say(f"error: {line}")
        return USER_ERROR_EXIT_CODE


def results_folder(output_dir: Path, hub_model_id: Optional[str]) -> Path:
    """``output_dir``, or ``output_dir/<name>`` when that is where a run with --hub_model_id wrote."""
    from simpletuner.training.setup import RUN_CONFIG_FILE

    if (output_dir / RUN_CONFIG_FILE).is_file() or not hub_model_id:
        return output_dir
    nested = output_dir / hub_model_id.rstrip("/").split("/")[-1]
    return nested if (nested / RUN_CONFIG_FILE).is_file() else output_dir


def _publish(args: argparse.Namespace) -> int:
    from simpletuner.publishing import card
    from simpletuner.publishing.hub import (
        CHECKPOINTS_IN_REPO,
        failure_reason,
        final_ignore_patterns,
        push_folder,
        resolve_target,
    )
    from simpletuner.publishing.uploads import BackgroundUploads, retry_delays
    from simpletuner.training.checkpoint import list_checkpoints
    from simpletuner.training.run_lock import output_folder_lock
    from simpletuner.training.setup import RUN_CONFIG_FILE

    folder = results_folder(Path(args.output_dir), args.hub_model_id)
    values = card.read_json_file(folder / RUN_CONFIG_FILE)
    if values is None:
        raise UserError(f"--output_dir={args.output_dir}: no readable {RUN_CONFIG_FILE} there; point it at the "
                        "results folder of a SimpleTuner run")
    repo = args.hub_model_id or values.get("hub_model_id")
    delays = retry_delays()
    target = resolve_target(repo, args.hub_token, folder.name, flag=FLAG)
    with output_folder_lock(folder):  # not while a training run is writing there
        summary = card.read_json_file(folder / card.SUMMARY_FILE) or {}
        card.write_card(folder, values, summary, target.repo_id)
        uploads = BackgroundUploads(delays, failure_reason)
        if args.push_checkpoints_to_hub:
            for checkpoint in list_checkpoints(folder):
                uploads.submit(checkpoint.name, lambda c=checkpoint: push_folder(
                    target, c, f"SimpleTuner: {c.name}", path_in_repo=f"{CHECKPOINTS_IN_REPO}/{c.name}"))
        ignore = final_ignore_patterns(folder, str(values.get("logging_dir") or "logs"))
        uploads.submit("the weights and model card",
                       lambda: push_folder(target, folder, "SimpleTuner: publish", ignore_patterns=ignore))
        failures = uploads.wait()
    if failures:
        command = ["python", "-m", FLAG, "--output_dir", str(folder), "--hub_model_id", target.repo_id]
        if args.push_checkpoints_to_hub:
            command.append("--push_checkpoints_to_hub")
        what = ", ".join(f"{f.what} ({f.reason})" for f in failures)
        _say(f"error: publishing {folder} to {target.url} failed: {what}; the local files are intact; "
             f"retry with: {shlex.join(command)}")
        return PUBLISH_FAILED_EXIT_CODE
    print(f"published {folder} to {target.url}")
    return 0


def _say(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
