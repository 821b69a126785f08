"""What a training run publishes, behind the few calls the trainer makes.

``RunPublishing.start`` (before anything loads) checks the Hub token and the
webhook file.  Then the trainer reports ``started``, each step, each
checkpoint, and ``finished`` or ``failed``; this object posts webhooks,
queues background uploads, writes the model card and, at the end, waits for
the uploads.  Only the main process publishes; on the others every call
does nothing.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Any, Optional

from simpletuner.errors import PublishError
from simpletuner.publishing import card
from simpletuner.publishing.hub import (
    CHECKPOINTS_IN_REPO,
    HubTarget,
    failure_reason,
    final_ignore_patterns,
    push_folder,
    resolve_target,
)
from simpletuner.publishing.uploads import BackgroundUploads, UploadFailure, retry_delays
from simpletuner.publishing.webhooks import Notifier

logger = logging.getLogger(__name__)


class RunPublishing:
    def __init__(self, config: Any, output_dir: Path, target: Optional[HubTarget] = None,
                 notifier: Optional[Notifier] = None, active: bool = True) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.target = target
        self.notifier = notifier
        self.active = active
        self.uploads = BackgroundUploads(retry_delays(), failure_reason) if target is not None else None
        self.summary: dict[str, Any] = {}
        self.step: int = 0
        self.last_loss: Optional[float] = None

    @classmethod
    def start(cls, config: Any, output_dir: Path, main_process: Optional[bool] = None) -> "RunPublishing":
        """Check the token and webhook file now; ConfigError (exit 2) when either is unusable."""
        if main_process is None:
            main_process = int(os.environ.get("RANK", "0")) == 0
        if not main_process:
            return cls(config, output_dir, active=False)
        retry_delays()  # a malformed retry setting is a start-up error, not an end-of-run one
        target = None
        if config.push_to_hub:
            target = resolve_target(config.hub_model_id, config.hub_token, Path(output_dir).name)
            logger.info("publishing to %s at the end of the run%s", target.url,
                        " (checkpoints as they are written)" if config.push_checkpoints_to_hub else "")
        return cls(config, output_dir, target, Notifier.from_config(config))

    # -- events from the trainer ------------------------------------------------------
    def started(self, summary: dict[str, Any]) -> None:
        """Training begins; ``summary`` is what the model card will say about the run."""
        if not self.active:
            return
        self.summary = summary
        if self.notifier:
            self.notifier.started(summary.get("steps"))

    def after_step(self, step: int, loss: float, lr: float) -> None:
        self.step, self.last_loss = step, loss
        if self.active and self.notifier:
            self.notifier.progress(step, loss, lr)

    def validated(self, step: int, grid_path: Optional[Path]) -> None:
        if self.active and self.notifier:
            self.notifier.validated(step, grid_path)

    def checkpointed(self, step: int, folder: Optional[Path]) -> None:
        if not self.active or folder is None:
            return
        if self.notifier:
            self.notifier.checkpointed(step)
        if self.uploads is not None and self.config.push_checkpoints_to_hub:
            target, name = self.target, folder.name
            self.uploads.submit(name, lambda: _push_checkpoint(target, folder, name))

    def finished(self, step: int, epoch: int) -> None:
        """Write the card, push, wait for every upload; PublishError (exit 4) when a push failed for good."""
        if not self.active:
            return
        from simpletuner.config.model import redacted_values

        from simpletuner.training.disk_space import writing

        self.summary.update(steps=step, epochs=epoch)
        with writing("the model card", self.output_dir):  # a full disk: one line, exit 3
            card.write_summary(self.output_dir, self.summary)
            card.write_card(self.output_dir, redacted_values(self.config), self.summary,
                            self.target.repo_id if self.target else None)
        failures: list[UploadFailure] = []
        if self.uploads is not None:
            ignore = final_ignore_patterns(self.output_dir, self.config.logging_dir)
            target, folder = self.target, self.output_dir
            self.uploads.submit("the final weights and model card",
                                lambda: push_folder(target, folder, f"SimpleTuner: step {step}",
                                                    ignore_patterns=ignore))
            logger.info("waiting for uploads to %s to finish", self.target.url)
            failures = self.uploads.wait()
        if self.notifier:
            pushed = self.target.url if self.target and not failures else None
            self.notifier.finished(step, self.output_dir, pushed)
        if failures:
            raise PublishError(publish_failure_message(failures, self.output_dir, self.target, self.config))
        if self.target is not None:
            logger.info("published to %s", self.target.url)

    def failed(self, error: BaseException) -> None:
        """The run stopped with ``error``: say so, and let checkpoint uploads in flight finish."""
        if not self.active:
            return
        if self.notifier:
            first = (str(error).strip().splitlines() or [""])[0][:500]
            self.notifier.failed(f"{type(error).__name__}: {first}" if first else type(error).__name__,
                                 self.step, self.last_loss)
        if self.uploads is not None:
            for failure in self.uploads.wait():
                logger.warning("%s was not uploaded: %s", failure.what, failure.reason)


def _push_checkpoint(target: Optional[HubTarget], folder: Path, name: str) -> None:
    if not folder.is_dir():  # pruned by --checkpoints_total_limit before its turn came
        logger.info("%s was removed before it could be uploaded; skipped", name)
        return
    try:
        push_folder(target, folder, f"SimpleTuner: {name}", path_in_repo=f"{CHECKPOINTS_IN_REPO}/{name}")
    except (FileNotFoundError, ValueError):
        if folder.is_dir():
            raise
        logger.info("%s was removed while it was being uploaded; skipped", name)


def publish_failure_message(failures: list[UploadFailure], output_dir: Path, target: HubTarget, config: Any) -> str:
    what = ", ".join(f"{f.what} ({f.reason})" for f in failures)
    command = ["python", "-m", "simpletuner.publish", "--output_dir", str(output_dir), "--hub_model_id",
               target.repo_id]
    if config.push_checkpoints_to_hub:
        command.append("--push_checkpoints_to_hub")
    return (f"training finished and its files are intact in {output_dir}, but publishing to {target.url} failed: "
            f"{what}; retry with: {shlex.join(command)}")
