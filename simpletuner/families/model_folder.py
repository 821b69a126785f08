"""Is the model where the options say, and is it the model family they name?

Checked before anything is encoded or downloaded:

* a Hub id that is not in the local Hugging Face cache fails at once when the
  Hub cannot be reached (``HF_HUB_OFFLINE=1``, no network), instead of after
  diffusers' retries with a message about a missing ``config.json``;
* the folder's ``model_index.json`` (its pipeline ``_class_name`` and the
  denoiser's class) must be what ``--model_family`` trains
  (:meth:`ModelFamily.model_index_problem`), and a separate denoiser folder
  (``--pretrained_unet/transformer_model_name_or_path``) must hold the
  family's denoiser class;
* a single-file checkpoint must be a readable safetensors file, and the
  folder or Hub id its configs come from passes the checks above.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from simpletuner.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from simpletuner.families.base import ModelFamily, ModelSource

logger = logging.getLogger("simpletuner")

# Where single files (SD 1/2, SDXL, SD3) keep their text encoders.
_TEXT_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.embedders.", "text_encoders.")

# How long the Hub may take to answer whether a model exists.
HUB_TIMEOUT_S = 5.0


def is_local(path: str) -> bool:
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~"))


def single_file_keys(path: str) -> list[str]:
    """The tensor names of a safetensors file (its header only)."""
    from safetensors import safe_open

    with safe_open(str(Path(path).expanduser()), framework="pt") as handle:
        return list(handle.keys())


def single_file_shape(path: str, key: str) -> list[int]:
    """The shape of one tensor of a safetensors file (its header only)."""
    from safetensors import safe_open

    with safe_open(str(Path(path).expanduser()), framework="pt") as handle:
        return list(handle.get_slice(key).get_shape())


def single_file_components(path: str) -> set[str]:
    """The components a single-file checkpoint holds: the denoiser always (it is the
    model), the VAE when its original (``first_stage_model.``) or ``vae.`` keys are there."""
    keys = single_file_keys(path)
    found = {"unet", "transformer"}
    if any(key.startswith(("first_stage_model.", "vae.")) for key in keys):
        found.add("vae")
    return found


def check_single_file(source: "ModelSource", family: Optional["ModelFamily"]) -> None:
    """A readable safetensors file, and a config source that is the family's."""
    from simpletuner.families.flavours import SINGLE_FILE_SUFFIXES

    path = Path(str(source.single_file)).expanduser()
    option = f"--pretrained_model_name_or_path={source.single_file}"
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelError(f"{option}: a single-file checkpoint must be a .safetensors file (got {path.suffix or 'no suffix'}); "
                         "convert it, or point it at a diffusers model folder")
    if family is not None and not family.single_file_markers:
        raise ModelError(f"{option}: --model_family={family.name} cannot load single-file checkpoints "
                         "(diffusers cannot convert them); use a diffusers model folder")
    try:
        keys = single_file_keys(str(path))
    except Exception as error:  # safetensors' own error types: a damaged or foreign file
        raise ModelError(f"{option}: cannot be read as safetensors ({type(error).__name__}); "
                         "the file is damaged or not a checkpoint") from None
    if family is not None and not any(key.startswith(family.single_file_markers) for key in keys):
        raise ModelError(f"{option}: holds no {family.name} {family.denoiser_component} (no tensor name starts "
                         f"with {' or '.join(family.single_file_markers)}); check --model_family or the file")
    problem = family.single_file_problem(str(path), keys) if family is not None else None
    if problem:
        raise ModelError(f"{option}: {problem}")
    if any(key.startswith(_TEXT_ENCODER_PREFIXES) for key in keys):
        # diffusers' converter picks CLIP-L or CLIP-G by comparing widths, which is not reliable
        # beyond the stock models, so the encoders come from the configs' model instead.
        logger.warning("%s holds text encoders, which are not used: the text encoders come from %s",
                       source.single_file, source.base)
    check_model_folder(source, family, option="--single_file_config")


def check_model_folder(source: "ModelSource", family: Optional["ModelFamily"],
                       option: str = "--pretrained_model_name_or_path") -> None:
    index_file = _find(source.base, "model_index.json", source.revision, option)
    if index_file is not None and family is not None:
        problem = family.model_index_problem(_read_json(index_file), set(source.overrides))
        if problem:
            raise ModelError(f"{option}={source.base}: {problem}")
    for component, (path, subfolder) in source.overrides.items():
        if path == source.base:
            continue
        option = _override_option(component, family)
        file_name = "tokenizer_config.json" if component.startswith("tokenizer") else "config.json"
        config_file = _find(path, f"{subfolder}/{file_name}" if subfolder else file_name, source.revision, option)
        if family is not None and component == family.denoiser_component and config_file is not None:
            found = _read_json(config_file).get("_class_name")
            if found != family.denoiser_class_name:
                raise ModelError(
                    f"{option}={path}: holds a {found}, not the {family.denoiser_class_name} that "
                    f"--model_family={family.name} trains; point it at a {family.name} {component}"
                )


def _override_option(component: str, family: Optional["ModelFamily"]) -> str:
    if family is not None and component in family.t5_components:
        return "--pretrained_t5_model_name_or_path"
    return f"--pretrained_{component}_model_name_or_path"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot be read as JSON ({error}); the model folder is damaged") from None
    return data if isinstance(data, dict) else {}


def _find(path: str, file_name: str, revision: Optional[str], option: str) -> Optional[Path]:
    """The file in a local folder or in the Hub cache; None when it will be downloaded.

    Raises ModelError when a Hub id is neither cached nor reachable.
    """
    if is_local(path):
        local = Path(path).expanduser() / file_name
        return local if local.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, file_name, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    _require_hub(path, revision, option)
    return None


def _require_hub(repo_id: str, revision: Optional[str], option: str) -> None:
    """Ask the Hub once, briefly, whether ``repo_id`` can be downloaded."""
    from huggingface_hub import constants, is_offline_mode, model_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    fix = (f"download it while online (hf download {repo_id}) or point {option} at a local diffusers folder")
    if is_offline_mode():
        raise ModelError(f"{option}={repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    try:
        model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelError(f"{option}={repo_id}: the repository is gated; accept its terms on the Hub and log in "
                         "(hf auth login), or point it at a local diffusers folder") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{option}={repo_id}: no such model on the Hub (or it is private: log in with "
                         "hf auth login); check the id or point it at a local diffusers folder") from None
    except RevisionNotFoundError:
        raise ModelError(f"--revision={revision}: {repo_id} has no such branch, tag or commit") from None
    except HfHubHTTPError:
        return  # the Hub answered; from_pretrained reports anything else in its own words
    except Exception as error:  # no route, refused, timed out: the HTTP client's own error types
        raise ModelError(
            f"{option}={repo_id}: not in the local Hugging Face cache and the Hub ({constants.ENDPOINT}) "
            f"cannot be reached ({type(error).__name__}); {fix}"
        ) from None
