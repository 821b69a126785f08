"""--report_to wandb / comet_ml: the credentials the tracker will ask for, checked before anything starts.

Without an API key (and not in offline mode) ``wandb.init`` raises its own
UsageError once the model is loaded, or waits at an interactive prompt, and
comet_ml raises ValueError; a user who meant to log locally only learns of
offline mode from a traceback.  Looking for the key reads only what the
tracker itself would read (environment variables, ``.netrc``, config files):
nothing reaches the network.
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
    trackers = config.report_to or []
    if "comet_ml" in trackers and not _comet_can_start(env):
        raise ConfigError(
            "--report_to comet_ml: comet_ml has no API key on this machine; set COMET_API_KEY (or api_key in "
            "~/.comet.config), or set COMET_START_ONLINE=false in config/config.env to log to a local archive"
        )
    if "wandb" not in trackers:
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


def _comet_can_start(env: Mapping[str, str]) -> bool:
    if env.get("COMET_API_KEY", "").strip():
        return True
    # comet_ml reads this at import (see training/setup.py): no error reports to Sentry.
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    try:
        from comet_ml.config import get_config
    except ImportError:  # another comet_ml layout (or none): leave the question to comet_ml
        return True
    settings = get_config()
    if not settings.get_bool(None, "comet.start.online", default=True):
        return True
    return bool(settings["comet.api_key"])


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
