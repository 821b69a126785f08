"""The Hugging Face Hub, through ``huggingface_hub`` only: token check, repository, folder uploads.

The token is ``--hub_token`` when given, else whatever ``huggingface_hub``
resolves itself (``HF_TOKEN``, then the token ``hf auth login`` saved).
``HF_ENDPOINT`` is read when a target is made rather than when the library
was imported, so a private Hub mirror set in the environment is always the
one used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINTS_IN_REPO = "checkpoints"  # checkpoint-N/ is pushed to checkpoints/checkpoint-N/
# Never uploaded with the final weights: checkpoints go separately (--push_checkpoints_to_hub);
# dot files are locks and partial writes; debug.log holds local paths.
FINAL_IGNORE = ["checkpoint-*", ".*", "debug.log", "*.partial", "*.partial/*"]


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    endpoint: str
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"


def hub_endpoint(env: Optional[Mapping[str, str]] = None) -> str:
    from huggingface_hub import constants

    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_target(repo_id: Optional[str], token: Optional[str], default_name: str,
                   env: Optional[Mapping[str, str]] = None, flag: str = "--push_to_hub") -> HubTarget:
    """Check the token against the Hub and name the repository; ConfigError (one line) otherwise.

    Called before anything is loaded, so a missing or rejected token costs
    seconds, not a training run.
    """
    from huggingface_hub import HfApi, get_token

    endpoint = hub_endpoint(env)
    token = token or get_token()
    if not token:
        raise ConfigError(
            f"{flag} needs a Hugging Face token: pass --hub_token, set HF_TOKEN, or run `hf auth login`"
        )
    try:
        who = HfApi(endpoint=endpoint, token=token).whoami()
    except Exception as error:
        status = _status(error)
        if status in (401, 403):
            raise ConfigError(
                f"{flag}: the Hub at {endpoint} rejected the token (HTTP {status}); create a write token at "
                f"{endpoint}/settings/tokens and pass it with --hub_token or HF_TOKEN"
            ) from None
        raise ConfigError(
            f"{flag}: could not check the token with the Hub at {endpoint} ({failure_reason(error)}); check the "
            "network or HF_ENDPOINT, or train without --push_to_hub and publish afterwards with "
            "python -m simpletuner.publish"
        ) from None
    role = (((who.get("auth") or {}).get("accessToken")) or {}).get("role")
    if role == "read":
        raise ConfigError(f"{flag}: the token is read-only; create a write token at {endpoint}/settings/tokens")
    name = repo_id or default_name
    if "/" not in name:
        name = f"{who.get('name')}/{name}"
    return HubTarget(name, endpoint, token)


def push_folder(target: HubTarget, folder: Path, message: str, path_in_repo: str = "",
                ignore_patterns: Optional[Sequence[str]] = None) -> str:
    """Create the repository if needed and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # uploads run behind the training progress bar; the log says when each is done
    api = HfApi(endpoint=target.endpoint, token=target.token)
    api.create_repo(target.repo_id, exist_ok=True)
    info = api.upload_folder(
        repo_id=target.repo_id, folder_path=str(folder), path_in_repo=path_in_repo or None,
        commit_message=message, ignore_patterns=list(ignore_patterns or []),
    )
    return str(getattr(info, "commit_url", "") or target.url)


def final_ignore_patterns(output_dir: Path, logging_dir: str = "logs") -> list[str]:
    """What the final push leaves out: see FINAL_IGNORE, plus tracker logs and older validation steps."""
    patterns = [*FINAL_IGNORE, f"{logging_dir.strip('/')}/*"]
    from simpletuner.publishing.card import validation_steps

    steps = validation_steps(output_dir)
    patterns += [f"{folder.relative_to(output_dir).as_posix()}/*" for folder in steps[:-1]]
    return patterns


def failure_reason(error: BaseException) -> str:
    """A short, secret-free reason: the HTTP status, or the kind of connection failure."""
    status = _status(error)
    if status is not None:
        return f"HTTP {status}"
    cause: Optional[BaseException] = error
    while cause is not None:
        name = type(cause).__name__
        if "Connect" in name or "Timeout" in name or isinstance(cause, ConnectionError):
            return f"could not connect ({name})"
        cause = cause.__cause__ or cause.__context__
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _status(error: BaseException) -> Optional[int]:
    cause: Optional[BaseException] = error
    while cause is not None:
        response: Any = getattr(cause, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
        cause = cause.__cause__ or cause.__context__
    return None
