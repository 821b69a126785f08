"""Cost of one validation inside the trainer against bare pipeline calls, in one process.

Usage::

    python benchmarks/validation.py [--rounds N] [--steps S] [--resolutions 64,96x64]
                                    [--prompts P] [--threads T]

Our standard: a validation costs at most 15% more than calling the family's
stock pipeline for the same images.  The last line printed is exactly
``validation_overhead_ratio: R`` with R = median trainer validation time /
median time of the bare calls.

What runs
---------
* A tiny random SDXL model and a two-class dataset in a temporary folder.
  ``--pretrained_model_name_or_path``/``--model_family`` point it at another
  model.
* **Trainer**: ``Trainer`` trains one step with validation configured the way
  a user would (``P`` prompts from ``--validation_prompt`` and a
  ``--user_prompt_library``, every ``--validation_resolution``, ``S`` steps,
  guidance 7.5, no unconditional row, no benchmark, ``--report_to none``).
  From the step hook, validation then runs ``N`` more times through the same
  call the trainer makes (``Validation._validate``: training state kept and
  put back, cached text embeds, the pipeline built once around the live
  UNet, PNGs, grid and manifest written).  The first validation, which also
  loads the VAE and builds the pipeline, is printed apart.
* **Bare**: ``from_pretrained`` of the whole pipeline (text encoders
  included) around the trainer's own UNet with its trained adapter (the
  adapter's cost is the model's, not validation's), then ``pipeline(prompt, negative_prompt=..., height, width,
  num_inference_steps, guidance_scale, generator)`` for the same prompts,
  sizes, seeds and steps, PIL images out, nothing saved.

The two alternate round by round, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PROMPTS = ["a red square", "a blue circle on a white background", "a photo of a cat", "a green tree in a field"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolutions", default="64,96x64")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 leaves torch's default)")
    parser.add_argument("--model_family", default="sdxl")
    parser.add_argument("--pretrained_model_name_or_path", default=None)
    args = parser.parse_args(argv)

    import torch

    from family_harness import write_two_class_project
    from simpletuner.config.loader import load_config
    from simpletuner.logs import quiet_libraries
    from simpletuner.tools.tiny_model import make_tiny_model
    from simpletuner.training.trainer import Trainer
    from simpletuner.validation.prompts import parse_resolutions

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="validation_bench_"))
    write_two_class_project(root, size=64, per_class=2)
    model = args.pretrained_model_name_or_path or str(make_tiny_model(args.model_family, root / "model"))
    prompts = PROMPTS[: args.prompts]
    (root / "library.json").write_text(json.dumps({f"p{i}": p for i, p in enumerate(prompts[1:])}), encoding="utf-8")
    config = load_config([
        "--model_family", args.model_family, "--pretrained_model_name_or_path", model,
        "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / "output"),
        "--mixed_precision", "no", "--seed", "0", "--max_train_steps", "1", "--report_to", "none",
        "--validation_prompt", prompts[0], "--user_prompt_library", str(root / "library.json"),
        "--validation_steps", "1", "--validation_resolution", args.resolutions,
        "--validation_num_inference_steps", str(args.steps), "--validation_guidance", "7.5",
        "--validation_disable_unconditional", "--disable_benchmark", "--validation_seed", "0",
    ], env={}, cwd=root)
    sizes = parse_resolutions(args.resolutions)
    ours: list[float] = []
    bare: list[float] = []
    first: list[float] = []

    class Measured(Trainer):
        def _after_step(self, *a, **k):
            started = time.perf_counter()
            super()._after_step(*a, **k)  # the scheduled validation: loads the VAE, builds the pipeline
            first.append(time.perf_counter() - started)
            # The same trained UNet (adapter and all): what is compared is the code around it.
            denoiser = self.accelerator.unwrap_model(self.denoiser).eval()
            pipeline = self.family.pipeline_class().from_pretrained(model, **{self.family.denoiser_component: denoiser})
            pipeline.set_progress_bar_config(disable=True)
            for _ in range(args.rounds):
                started = time.perf_counter()
                self.validation._validate(self, self.state.global_step, benchmark=False)
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                for prompt in prompts:
                    for width, height in sizes:
                        pipeline(prompt, negative_prompt=config.validation_negative_prompt, height=height,
                                 width=width, num_inference_steps=args.steps, guidance_scale=7.5,
                                 generator=torch.Generator("cpu").manual_seed(0))
                bare.append(time.perf_counter() - started)
            denoiser.train()

    quiet_libraries()
    Measured(config, show_progress=False).run()
    images = len(prompts) * len(sizes)
    print(f"images per validation: {images} ({len(prompts)} prompts x {len(sizes)} sizes, {args.steps} steps)")
    print(f"first validation (VAE load, pipeline build, step hook): {first[0]:.3f} s")
    print(f"trainer validation: median {statistics.median(ours):.3f} s, mean {statistics.mean(ours):.3f} s")
    print(f"bare pipeline calls: median {statistics.median(bare):.3f} s, mean {statistics.mean(bare):.3f} s")
    print(f"validation_overhead_ratio: {statistics.median(ours) / statistics.median(bare):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
