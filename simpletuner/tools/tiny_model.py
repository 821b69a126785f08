"""Write tiny, randomly initialised diffusion models in the exact diffusers layout.

The models are meant for tests and smoke runs: they load with the same
``from_pretrained`` calls as the real checkpoints, have the same conditioning
structure (text encoders, micro-conditioning, VAE downscale factor, scheduler
settings), but about a million parameters, so a training step takes tens of
milliseconds on a CPU.  Builds are deterministic per seed and leave the
caller's torch RNG state untouched.  Nothing is downloaded: the tokenizers are
built locally.

Usage::

    python -m simpletuner.tools.tiny_model --model_family sdxl --output_dir DIR [--seed 0]

Each model family is one module ``simpletuner/tools/tiny/<family>.py`` with a
``build(output_dir, seed)`` function; families are found by module name.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from simpletuner.errors import USER_ERROR_EXIT_CODE, ConfigError, UserError

_FAMILIES = ("sdxl", "legacy", "sd3", "flux", "pixart_sigma", "kolors")
# Models that are not a model family: the CLIP that --evaluation_type clip scores with.
_EXTRAS = ("clip",)


def available_builders() -> list[str]:
    """Families (and extras such as clip) with a tiny-model builder module."""
    return [f for f in _FAMILIES + _EXTRAS if importlib.util.find_spec(f"simpletuner.tools.tiny.{f}") is not None]


def make_tiny_model(model_family: str, output_dir: str | Path, seed: int = 0, **options: str) -> Path:
    """Write a tiny random *model_family* model to *output_dir* and return the path.

    *options* go to the family's builder (e.g. ``flavour="sd2"`` for legacy).

    Raises :class:`~simpletuner.errors.ConfigError` for an unknown family.
    """
    if model_family not in available_builders():
        raise ConfigError(
            f"unknown model family {model_family!r} for a tiny model; available: {', '.join(available_builders())}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    import torch

    from simpletuner.tools.tiny.common import quiet_build

    build = importlib.import_module(f"simpletuner.tools.tiny.{model_family}").build
    with quiet_build(), torch.random.fork_rng(devices=[]):
        build(output_dir, seed, **options)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simpletuner.tools.tiny_model",
        description="Write a tiny, randomly initialised diffusers model for tests.",
    )
    parser.add_argument("--model_family", required=True, help=f"one of: {', '.join(available_builders())}")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from simpletuner.logs import setup_logging

    # Before the first torch import: library chatter stays off the console.
    setup_logging(os.environ)
    try:
        path = make_tiny_model(args.model_family, args.output_dir, seed=args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
