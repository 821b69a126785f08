"""Word when a run starts, validates, checkpoints, finishes or dies: ``--webhook_config``.

The file is SimpleTuner's: one JSON object (or a list of them) with

* ``webhook_type``: ``discord`` (the default) or ``raw``;
* ``webhook_url`` (``callback_url`` is accepted too, SimpleTuner's name for raw
  endpoints): where to post;
* ``message_prefix``: put before every message (the machine's or run's name).

Discord gets ``content`` as JSON, or ``payload_json`` plus the grid image as a
multipart file attachment; a raw endpoint gets one JSON object per event.
The URL carries the endpoint's credentials, so it is a secret: it never
appears in a log line, an error or a saved file.  A post that fails is
logged (naming the event, never the URL) and the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

WEBHOOK_TYPES = ("discord", "raw")
POST_TIMEOUT_S = 10.0
DISCORD_LIMIT = 2000  # characters Discord takes in one message


@dataclass(frozen=True)
class Webhook:
    type: str
    url: str = field(repr=False)
    message_prefix: str = ""


def read_webhook_config(path: Any) -> list[Webhook]:
    """The endpoints a --webhook_config file names; ConfigError with one line when it is unusable."""
    where = f"--webhook_config={path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: cannot be read ({error.__class__.__name__})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON (line {error.lineno}: {error.msg})") from None
    entries = data if isinstance(data, list) else [data]
    hooks = []
    for index, entry in enumerate(entries):
        at = where if len(entries) == 1 else f"{where}, entry {index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected a JSON object with webhook_url (and webhook_type)")
        kind = str(entry.get("webhook_type", "discord")).lower()
        if kind not in WEBHOOK_TYPES:
            raise ConfigError(f"{at}: webhook_type {kind!r} is not one of {', '.join(WEBHOOK_TYPES)}")
        url = entry.get("webhook_url") or entry.get("callback_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            # The value itself is never echoed: it is (or contains) a secret.
            raise ConfigError(f"{at}: webhook_url must be an http:// or https:// URL")
        hooks.append(Webhook(kind, url, str(entry.get("message_prefix") or "")))
    return hooks


def webhook_secrets(path: Any) -> list[str]:
    """The URLs of a webhook config, for the log filter; empty when there is none or it is unreadable."""
    if not path:
        return []
    try:
        return [hook.url for hook in read_webhook_config(path)]
    except ConfigError:
        return []


class Notifier:
    """Posts run events to every configured webhook; never raises."""

    def __init__(self, hooks: Sequence[Webhook], reporting_interval: Optional[int] = None,
                 run_name: str = "training") -> None:
        import requests

        self.hooks = list(hooks)
        self.reporting_interval = reporting_interval
        self.run_name = run_name
        self._session = requests.Session()

    @classmethod
    def from_config(cls, config: Any) -> Optional["Notifier"]:
        if not config.webhook_config:
            return None
        name = config.hub_model_id or Path(config.output_dir).name
        return cls(read_webhook_config(config.webhook_config), config.webhook_reporting_interval, name)

    # -- events ---------------------------------------------------------------
    def started(self, total_steps: Optional[int] = None) -> None:
        length = f" for {total_steps} steps" if total_steps else ""
        self._post("started", f"Training {self.run_name} started{length}.", {"total_steps": total_steps})

    def validated(self, step: int, grid_path: Optional[Path] = None) -> None:
        self._post("validated", f"Validation images at step {step}.", {"step": step}, image=grid_path)

    def checkpointed(self, step: int) -> None:
        self._post("checkpointed", f"Saved checkpoint-{step}.", {"step": step})

    def progress(self, step: int, loss: float, lr: float) -> None:
        """Every --webhook_reporting_interval steps, to raw endpoints only."""
        if not self.reporting_interval or step % self.reporting_interval:
            return
        self._post("progress", f"Step {step}: loss {loss:.4g}.", {"step": step, "loss": loss, "lr": lr},
                   kinds=("raw",))

    def finished(self, step: int, output_dir: Path, hub_url: Optional[str] = None) -> None:
        where = f" and pushed to {hub_url}" if hub_url else ""
        self._post("finished", f"Training {self.run_name} finished at step {step}; saved in {output_dir}{where}.",
                   {"step": step, "output_dir": str(output_dir), "hub_url": hub_url})

    def failed(self, message: str, step: Optional[int], last_loss: Optional[float]) -> None:
        loss = f", last loss {last_loss:.4g}" if last_loss is not None else ""
        self._post("failed", f"Training {self.run_name} stopped at step {step}{loss}: {message}",
                   {"step": step, "last_loss": last_loss, "error": message})

    # -- delivery ---------------------------------------------------------------
    def _post(self, event: str, text: str, data: dict[str, Any], image: Optional[Path] = None,
              kinds: Sequence[str] = WEBHOOK_TYPES) -> None:
        for hook in self.hooks:
            if hook.type not in kinds:
                continue
            message = f"{hook.message_prefix} {text}".strip()
            try:
                response = self._send(hook, event, message, data, image)
                if response.status_code >= 400:
                    logger.warning("webhook (%s) did not take the %s message: HTTP %d", hook.type, event,
                                   response.status_code)
            except Exception as error:  # a webhook must never stop training
                logger.warning("webhook (%s) could not be reached for the %s message: %s", hook.type, event,
                               error.__class__.__name__)

    def _send(self, hook: Webhook, event: str, message: str, data: dict[str, Any], image: Optional[Path]) -> Any:
        if hook.type == "raw":
            body = {"event": event, "message": message, "timestamp": time.time(), **data}
            if image is not None:
                body["image_path"] = str(image)
            return self._session.post(hook.url, json=body, timeout=POST_TIMEOUT_S)
        if image is not None and Path(image).is_file():
            with open(image, "rb") as handle:
                return self._session.post(
                    hook.url, data={"payload_json": json.dumps({"content": message[:DISCORD_LIMIT]})},
                    files={"file": (Path(image).name, handle, "image/png")}, timeout=POST_TIMEOUT_S,
                )
        return self._session.post(hook.url, json={"content": message[:DISCORD_LIMIT]}, timeout=POST_TIMEOUT_S)
