"""The attention dimension of the support matrix, as a section of ``documentation/QUANTISATION.md``.

Generated from :mod:`simpletuner.attention.backends` (and the families'
``attention_dispatch``) by ``python -m simpletuner.config.docgen``.
"""

from __future__ import annotations

from simpletuner.attention.backends import DEFAULT, MECHANISMS, Mechanism, cuda_cell
from simpletuner.attention.rules import FUSED_WITH_LYCORIS_WHY, FUSED_WITH_QUANTISED_WHY

CPU_TESTS = "tests/test_attention_backends.py, tests/test_fused_qkv.py"
GPU_SCRIPT = "benchmarks/attention_gpu.py"
# Which families' processors call diffusers' dispatcher (ModelFamily.attention_dispatch; checked on diffusers 0.42).
DISPATCH_FAMILIES = "flux"
DIRECT_SDPA_FAMILIES = "sdxl, legacy, kolors, pixart_sigma, sd3"


def _families(mechanism: Mechanism) -> str:
    if not mechanism.dispatch_only:
        return "all"
    return DISPATCH_FAMILIES


def _package(mechanism: Mechanism) -> str:
    if mechanism.package is None:
        return "torch"
    return f"`{mechanism.package}`" + (f" >= {mechanism.min_version}" if mechanism.min_version else "")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render_section() -> list[str]:
    lines = [
        "## Attention backends (`--attention_mechanism`)",
        "",
        "Every mechanism is diffusers' own: a backend of its attention dispatcher "
        "(`diffusers.models.attention_dispatch`), set on each attention processor of the denoiser, or for "
        "`xformers` on the other families diffusers' xformers processors.  In this diffusers version only "
        f"{DISPATCH_FAMILIES}'s attention processor calls the dispatcher; {DIRECT_SDPA_FAMILIES} use processors "
        "that call `torch.nn.functional.scaled_dot_product_attention` directly, so a dispatcher backend would "
        "never run there: those combinations are refused, and those families take `diffusers` or `xformers`.  "
        "A mechanism whose package is missing, whose GPU is too old, which needs bf16/fp16 under "
        "`--mixed_precision no`, or which takes no attention mask under `--flux_attention_masked_training` is "
        "refused at validation with one line (exit code 2).",
        "",
        "| mechanism | what | families | package | CPU | CUDA | Apple MPS | bf16/fp16 only | masks | "
        "proven by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in MECHANISMS:
        proof = CPU_TESTS if m.cpu else GPU_SCRIPT
        if m.name == DEFAULT:
            proof = "every training test"
        lines.append(
            f"| `{m.name}` | {m.summary} | {_families(m)} | {_package(m)} | {_yes(m.cpu)} | {cuda_cell(m)} | "
            f"{_yes(m.mps)} | {_yes(m.half_only)} | {_yes(m.masks)} | {proof} |"
        )
    lines += [
        "",
        "`--sageattention_usage` says where SageAttention computes attention: `inference` (the default: "
        "validation images only; training uses PyTorch SDPA), `training`, or `training+inference`.  "
        "SageAttention has no backward pass: when it trains, no gradient reaches the query, key and value "
        "projections, so those layers (and a LoRA on them) stay untrained; the run warns at start-up.",
        "",
        "Apple MPS cells follow PyTorch's and the libraries' documentation; no MPS machine checks them here.",
        "",
        "## Fused QKV projections (`--fused_qkv_projections`)",
        "",
        "diffusers' `fuse_qkv_projections()` merges each attention block's query, key and value Linears into "
        "one matmul (key and value only for cross-attention; the text stream's too on SD3 and Flux).  It works "
        "for every family here, on any hardware, and with every mechanism on Flux: the fused Linear is a plain "
        "Linear that diffusers' own processors use, so no particular GPU or Flash Attention 3 is needed "
        "(SimpleTuner's note that it needs an H100/H200 with Flash Attention 3 describes where it pays off, "
        "not what it requires).  Fusing changes no result: the fused model's output equals the unfused one's.",
        "",
        "- LoRA (PEFT, also with `--use_dora`): the adapter trains on the fused Linear and is saved "
        "as the equivalent adapters of the separate q, k and v Linears, so the file loads on the ordinary base "
        "model with `load_lora_weights`.  A `--lora_target_modules` list naming only some of q, k and v of a "
        "fused block is refused (a LoRA on the fused Linear would train all three).",
        "- Full fine-tune: the separate weights are views of the fused one, and checkpoints and the final "
        "model are saved without the fused Linears: an ordinary diffusers model folder.",
        f"- LyCORIS: refused; {FUSED_WITH_LYCORIS_WHY}.",
        f"- A quantised `--base_model_precision`: refused; {FUSED_WITH_QUANTISED_WHY}.",
        "- `xformers` on a family without the dispatcher: refused; diffusers' xformers processors compute "
        "q, k and v separately and would undo the fusion.",
        "",
        f"`{GPU_SCRIPT}` runs every GPU-only mechanism (and fused QKV under it) on a tiny model and trains "
        "with it; run it on a CUDA machine.",
        "",
    ]
    return lines
