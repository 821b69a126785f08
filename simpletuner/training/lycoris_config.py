"""Reading and checking the ``--lycoris_config`` JSON file.

Only the standard library is used here: validation runs before anything heavy
is imported (importing LyCORIS pulls in torch, bitsandbytes and quanto).

LyCORIS passes unknown keys through to its modules, which ignore them, so a
misspelt key would change nothing without a word.  The file is therefore
checked against the keys LyCORIS really reads.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from simpletuner.errors import ConfigError

# Algorithms whose saved weights LyCORIS' own loader (create_lycoris_from_weights)
# turns back into the same adapter; the trainer promises that round trip.
SUPPORTED_ALGOS = ("lora", "locon", "loha", "lokr", "full", "glora", "diag-oft", "boft")
# Why the others are refused, in words the user can act on.
UNSUPPORTED_ALGOS = {
    "dylora": "LyCORIS cannot load dylora weights back from its saved file",
    "ia3": "LyCORIS' loader fails on the ia3 weights it saves",
    "tlora": "tlora needs a timestep mask set before every forward pass, which this trainer does not do",
}

# Keys create_lycoris reads (plus the deprecated spellings it still maps).
NETWORK_KEYS = frozenset({
    "algo", "multiplier", "linear_dim", "linear_alpha", "conv_dim", "conv_alpha", "dropout",
    "rank_dropout", "module_dropout", "rank_dropout_scale", "use_tucker", "use_scalar", "train_norm",
    "constraint", "rescaled", "dora_wd", "wd_on_output", "full_matrix", "bypass_mode",
    "unbalanced_factorization", "factor", "decompose_both", "apply_preset",
    "disable_conv_cp", "use_cp", "use_conv_cp", "constrain",
})
# Keys of "apply_preset" that LycorisNetwork.apply_preset acts on.  Its
# unet_*/text_encoder_* keys are read only by kohya's scripts, and a custom
# lora_prefix would stop the saved file loading with LyCORIS' default loader.
PRESET_KEYS = frozenset({"enable_conv", "target_module", "target_name", "module_algo_map", "name_algo_map",
                         "use_fnmatch", "exclude_name"})
_NUMBERS = ("multiplier", "linear_dim", "linear_alpha", "conv_dim", "conv_alpha", "factor", "dropout",
            "rank_dropout", "module_dropout", "constraint")


def read_lycoris_config(path: str) -> dict[str, Any]:
    """The parsed file, or ConfigError naming the file and the problem."""
    where = f"--lycoris_config={path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{where}: no such file; point it at a JSON file describing the LyCORIS adapter")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = error.__class__.__name__
        raise ConfigError(f"{where}: cannot be read ({reason}); check the file's permissions and encoding") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    problem = lycoris_config_problem(spec)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return spec


def lycoris_config_problem(spec: Any) -> str | None:
    """What is wrong with a parsed config, in one line, or None."""
    if not isinstance(spec, dict):
        return "must be a JSON object such as {\"algo\": \"lokr\", \"linear_dim\": 16, \"linear_alpha\": 1}"
    unknown = sorted(set(spec) - NETWORK_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], NETWORK_KEYS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(NETWORK_KEYS))}"
        return f"unknown key(s) {', '.join(unknown)}, which LyCORIS would ignore; {hint}"
    if "algo" not in spec:
        return f"no \"algo\"; name one of {', '.join(SUPPORTED_ALGOS)}"
    problem = _algo_problem(spec["algo"], "algo")
    if problem:
        return problem
    for key in _NUMBERS:
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"\"{key}\" must be a number, got {value!r}"
    preset = spec.get("apply_preset")
    return None if preset is None else _preset_problem(preset)


def _algo_problem(algo: Any, where: str) -> str | None:
    name = algo.lower() if isinstance(algo, str) else algo
    if name in SUPPORTED_ALGOS:
        return None
    if name in UNSUPPORTED_ALGOS:
        return f"\"{where}\": {algo} is not supported: {UNSUPPORTED_ALGOS[name]}"
    return f"\"{where}\": unknown algorithm {algo!r}; choose one of {', '.join(SUPPORTED_ALGOS)}"


def _preset_problem(preset: Any) -> str | None:
    if not isinstance(preset, dict):
        return "\"apply_preset\" must be an object with keys such as target_module and module_algo_map"
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        return (f"\"apply_preset\" has unsupported key(s) {', '.join(unknown)}; use "
                f"{', '.join(sorted(PRESET_KEYS))}")
    for key in ("target_module", "target_name", "exclude_name"):
        names = preset.get(key)
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            return f"\"apply_preset.{key}\" must be a list of names"
    for key in ("module_algo_map", "name_algo_map"):
        problem = _algo_map_problem(preset.get(key), f"apply_preset.{key}")
        if problem:
            return problem
    return None


def _algo_map_problem(mapping: Any, where: str) -> str | None:
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        return f"\"{where}\" must map names to objects such as {{\"algo\": \"lokr\", \"factor\": 8}}"
    for name, override in mapping.items():
        if "algo" in override:
            problem = _algo_problem(override["algo"], f"{where}.{name}.algo")
            if problem:
                return problem
    return None
