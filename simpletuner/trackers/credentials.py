"""--report_to wandb: the credentials wandb will ask for, checked before anything starts.

Without an API key (and not in offline mode) ``wandb.init`` raises its own
UsageError once the model is loaded, or waits at an interactive prompt; a
user who meant to log locally only learns of ``WANDB_MODE=offline`` from a
traceback.  Looking for the key reads only what wandb itself would read (its
environment variables, ``.netrc`` and settings file): nothing reaches the
network.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from simpletuner.errors import ConfigError

# wandb's modes that need no account: nothing is sent, nothing is asked.
_LOCAL_MODES = ("offline", "disabled", "dryrun")


def check_tracker_credentials(config: Any, env: Optional[Mapping[str, str]] = None) -> None:
    """Raise ConfigError when --report_to names wandb and wandb has no way to log in."""
    env = os.environ if env is None else env
    if "wandb" not in (config.report_to or []):
        return
    if env.get("WANDB_MODE", "").strip().lower() in _LOCAL_MODES:
        return
    if env.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return
    if _wandb_is_logged_in():
        return
    raise ConfigError(
        "--report_to wandb: wandb has no API key on this machine; run `wandb login` (or set WANDB_API_KEY), "
        "or set WANDB_MODE=offline in config/config.env to log locally and `wandb sync` later"
    )


def _wandb_is_logged_in() -> bool:
    """Whether wandb finds credentials (or was set offline with `wandb offline`) without prompting."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth.authenticate import authenticate_session
    except ImportError:  # another wandb layout (or none): leave the question to wandb.init
        return True
    settings = wandb_setup.singleton().settings
    if settings.mode in _LOCAL_MODES:
        return True
    return authenticate_session(host=settings.base_url, source="simpletuner", prompt=False,
                                update_session=False) is not None
