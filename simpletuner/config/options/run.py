"""Options: hardware, performance and run control."""

from __future__ import annotations

from simpletuner.attention.backends import MECHANISM_NAMES
from simpletuner.config.option import AppliesWhen, Option
from simpletuner.config.options.common import (
    CHECKPOINTING,
    HARDWARE,
    RUN,
)

SAGEATTENTION_CHOSEN = AppliesWhen("attention_mechanism", ("sageattention",),
                                   "only --attention_mechanism sageattention reads it, not {attention_mechanism}")

OPTIONS: tuple[Option, ...] = (
    # ---------------------------------------------- Hardware and performance
    Option(
        "gradient_checkpointing", "bool", False,
        "Recompute activations during the backward pass instead of storing them: "
        "much less memory, somewhat slower steps.",
        HARDWARE,
    ),
    Option(
        "gradient_checkpointing_interval", "int", None,
        "Checkpoint only every n-th block (1 checkpoints them all, 2 every other "
        "one), trading some memory back for speed. Needs --gradient_checkpointing.",
        HARDWARE, minimum=1,
        applies_when=(CHECKPOINTING,),
    ),
    Option(
        "attention_mechanism", "str", "diffusers",
        "Attention implementation, one of diffusers' own: diffusers (PyTorch SDPA), xformers, "
        "sageattention (see --sageattention_usage), Flash Attention 2/3 (flash, flash_varlen, flash_3, "
        "flash_varlen_3) or PyTorch SDPA pinned to one kernel (native_cudnn, native_flash, native_efficient, "
        "native_math). Each needs its package and GPU (documentation/QUANTISATION.md); only Flux routes "
        "attention through diffusers' dispatcher, so other families take diffusers or xformers.",
        HARDWARE, choices=MECHANISM_NAMES,
    ),
    Option(
        "sageattention_usage", "str", "inference",
        "Where SageAttention computes attention: validation images (inference), training, or both. "
        "It has no backward pass, so training with it leaves the query/key/value projections without "
        "gradients: those layers do not learn.",
        HARDWARE, choices=("training", "inference", "training+inference"),
        applies_when=(SAGEATTENTION_CHOSEN,),
    ),
    Option(
        "fused_qkv_projections", "bool", False,
        "Merge the query, key and value projections of each attention block into one matmul "
        "(diffusers' fuse_qkv_projections); any hardware, with any --attention_mechanism on Flux. LoRAs and "
        "full fine-tunes are saved unfused, so they load on the ordinary model.",
        HARDWARE,
    ),
    Option(
        "torch_num_threads", "int", None,
        "CPU threads torch uses for its operations in each process. Unset keeps "
        "torch's choice (one per core); more threads than cores slows every step.",
        HARDWARE, minimum=1,
    ),
    Option(
        "memory_limit_gb", "float", None,
        "Memory in GiB the run may use, checked against the memory estimate before "
        "loading. Unset uses what the device reports free (system RAM when training "
        "on the CPU).",
        HARDWARE, minimum=0,
    ),
    Option(
        "skip_memory_check", "bool", False,
        "Start even when the memory estimate exceeds the memory available, instead "
        "of stopping before anything is loaded.",
        HARDWARE,
    ),
    Option(
        "distributed_timeout", "int", 600,
        "Seconds a process of a multi-process run waits for the others in a collective "
        "operation before the run stops with a message naming the process that failed "
        "(torch's own default is 30 minutes). Raise it when one process does long work "
        "alone, such as a slow checkpoint upload.",
        HARDWARE, minimum=1,
    ),
    # ----------------------------------------------------------- Run control
    Option(
        "print_config", "bool", False,
        "Print the fully resolved configuration, with secrets hidden, and exit.",
        RUN,
    ),
    Option(
        "estimate_memory", "bool", False,
        "Print the memory the run would need (parameters from the model's config and "
        "safetensors headers, no weights loaded), and exit.",
        RUN,
    ),
    Option(
        "dry_run", "bool", False,
        "Do everything up to loading the model's weights, then stop: print the resolved "
        "config, every check, the datasets with their buckets, what the caches hold and "
        "would encode, the memory estimate against the memory available "
        "(--memory_limit_gb, else the GPU's free memory, else system RAM on a CPU run), "
        "the disk space checkpoints need, and the steps and epochs. Exits 0 when the run "
        "would start, 2 with the reasons when it would not.",
        RUN,
    ),
    Option(
        "list_model_families", "bool", False,
        "List the model families that can be trained, and exit.",
        RUN,
    ),
    Option(
        "cache_only", "bool", False,
        "Build every latent and text-embed cache, then exit without training.",
        RUN,
    ),
)
