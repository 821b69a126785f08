"""Is ``--pretrained_evaluation_model_name_or_path`` a CLIP model we can load?

Checked with the options, before anything loads: a local folder must hold a
CLIP ``config.json`` and the image processor's settings; a Hub id must be in the
local cache or reachable (the same check the base model gets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from simpletuner.errors import ModelError

OPTION = "--pretrained_evaluation_model_name_or_path"
# Where a saved CLIPProcessor keeps the image settings (transformers 4.x, 5.x).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def clip_model_problem(path: Optional[str]) -> Optional[str]:
    """Why ``path`` cannot be scored with, in one line naming the option, or None."""
    if not path:
        return f"--evaluation_type clip needs {OPTION}: a CLIP model folder or Hub id (openai/clip-vit-large-patch14)"
    from simpletuner.families.model_folder import _find, is_local

    try:
        config_file = _find(path, "config.json", None, OPTION)
    except ModelError as error:
        return str(error)
    if config_file is None:
        return f"{OPTION}={path}: folder has no config.json; point it at a transformers CLIP model folder" \
            if is_local(path) else None  # a reachable Hub id: downloaded when first scored
    try:
        model_type = json.loads(Path(config_file).read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return f"{OPTION}={path}: config.json cannot be read as JSON; the model folder is damaged"
    if model_type != "clip":
        return (f"{OPTION}={path}: holds a {model_type or 'model of unknown type'} model, not CLIP; "
                "point it at a CLIP model such as openai/clip-vit-large-patch14")
    folder = Path(path).expanduser()
    if is_local(path) and not any((folder / name).is_file() for name in PROCESSOR_FILES):
        return (f"{OPTION}={path}: has no image processor settings ({' or '.join(PROCESSOR_FILES)}); "
                "save the CLIPProcessor beside the model")
    return None
