"""Peak memory of SDXL's trained text encoders (--train_text_encoder) at real size, against the estimate.

Usage::

    python benchmarks/memory_text_encoders.py [--cases lora,full] [--dtype fp16] [--workdir DIR]

Writes SDXL's two text encoders at their published sizes (CLIP-L, 123 M parameters,
and OpenCLIP-bigG with projection, 695 M) with random weights as safetensors
(``--dtype``: fp16 as the ``fp16`` variant stores them, or fp32), with the tiny
model's CLIP tokenizers (77 tokens, as the real ones).  Then, one subprocess per
case, does what the trainer does with them: ``TrainedTextEncoders`` loads them and
adds the LoRA (rank 16) or makes them trainable (``--model_type full``, default
``--freeze_encoder``), one batch of one caption is encoded with gradients, a
backward pass runs from the embeds, and the optimizer (adamw_bf16) steps.  Peak RSS
less the RSS after imports is printed beside ``estimate_trained_encoders``' total,
and ``estimate_error``: the largest |estimate - measured| / measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(root: Path, dtype_name: str) -> Path:
    """The encoders (random weights) and tokenizers in a diffusers-layout folder."""
    import shutil

    import torch
    import transformers
    from safetensors.torch import save_file

    from simpletuner.tools.tiny_model import make_tiny_model

    folder = root / f"sdxl_text_{dtype_name}"
    if (folder / "text_encoder_2" / "model.safetensors").is_file():
        return folder
    tiny = root / "tiny_sdxl"
    if not tiny.is_dir():
        make_tiny_model("sdxl", tiny, seed=0)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    for name, kwargs, model_class in (("text_encoder", CLIP_L, transformers.CLIPTextModel),
                                      ("text_encoder_2", CLIP_G, transformers.CLIPTextModelWithProjection)):
        config = transformers.CLIPTextConfig(**kwargs, architectures=[model_class.__name__])
        (folder / name).mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder / name))
        stored = json.loads((folder / name / "config.json").read_text())
        stored["dtype"] = str(dtype).removeprefix("torch.")
        (folder / name / "config.json").write_text(json.dumps(stored))
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in model_class(config).state_dict().items()}
        state = {k: (torch.randn(shape, generator=generator) * 0.02).to(dtype) for k, shape in shapes.items()}
        save_file(state, str(folder / name / "model.safetensors"))
        del state
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tiny / name, folder / name, dirs_exist_ok=True)
    return folder


def _config(folder: Path, case: str):
    from simpletuner.config.loader import load_config

    extra = ["--model_type", "full"] if case == "full" else []
    return load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", str(folder),
                        "--data_backend_config", "unused.json", "--train_text_encoder", *extra], env={}, cwd=REPO)


def run_case(folder: Path, case: str) -> dict:
    import torch

    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.training.optimizers import build_optimizer
    from simpletuner.training.trained_text_encoders import TrainedTextEncoders

    torch.set_num_threads(2)
    config = _config(folder, case)
    family = get_family("sdxl", config)
    baseline = _rss()
    text = TrainedTextEncoders(config, family, ModelSource(base=str(folder)), torch.device("cpu"), total_steps=10)
    optimizer = build_optimizer(text.parameters(), config, 1e-4)
    caption = type("Sample", (), {"caption": "a photo of a cat"})()
    embeds = text.embeds([caption], None, torch.float32, step=0)
    sum(e.float().pow(2).mean() for e in embeds.values()).backward()
    optimizer.step()
    return {"peak": _peak() - baseline}


def estimate(folder: Path, case: str) -> int:
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.memory.text_encoders import estimate_trained_encoders

    config = _config(folder, case)
    return estimate_trained_encoders(config, get_family("sdxl", config), ModelSource(base=str(folder)), 1).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="lora,full")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--workdir", default="/tmp/simpletuner-memory-text-encoders")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a subprocess runs one case
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.folder), args.case)))
        return
    folder = build(Path(args.workdir), args.dtype)
    errors = []
    for case in args.cases.split(","):
        result = subprocess.run([sys.executable, __file__, "--case", case, "--folder", str(folder)],
                                capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            print(f"{case}: failed\n{result.stderr[-2000:]}")
            continue
        measured = json.loads(result.stdout.strip().splitlines()[-1])["peak"]
        estimated = estimate(folder, case)
        errors.append(abs(estimated - measured) / measured)
        print(f"{case} ({args.dtype} encoders): step peak {measured / 2**30:.2f} GiB, "
              f"estimate {estimated / 2**30:.2f} GiB")
    if errors:
        print(f"estimate_error: {max(errors):.3f}")


if __name__ == "__main__":
    main()
