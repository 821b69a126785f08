"""Options: sharded training (FSDP2) and DeepSpeed, with HEAD SimpleTuner's names.

FSDP2 is torch's ``fully_shard``, applied by simpletuner/distributed/fsdp.py
with accelerate still launching the processes; DeepSpeed goes through
accelerate's DeepSpeed plugin and needs a GPU.
"""

from __future__ import annotations

from simpletuner.config.option import AppliesWhen, Option
from simpletuner.config.options.common import CHECKPOINTS, HARDWARE

FSDP = AppliesWhen("fsdp_enable", (True,), "only --fsdp_enable shards the model")
SIZE_BASED = AppliesWhen("fsdp_auto_wrap_policy", ("SIZE_BASED_WRAP",),
                         "only --fsdp_auto_wrap_policy SIZE_BASED_WRAP wraps by size")
FSDP_WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")

OPTIONS: tuple[Option, ...] = (
    Option(
        "fsdp_enable", "bool", False,
        "Shard the denoiser's weights, gradients and optimizer state across the training "
        "processes with FSDP2 (torch's fully_shard), one shard per transformer/UNet block, "
        "so a model that does not fit whole on one device can still train.",
        HARDWARE,
    ),
    Option(
        "fsdp_version", "int", 2,
        "FSDP generation. Only 2 (per-parameter DTensor sharding) is supported; FSDP1's "
        "flat-parameter wrapper is not used here.",
        HARDWARE, minimum=1, maximum=2, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_reshard_after_forward", "bool", True,
        "Free each block's gathered weights after its forward pass and gather them again for "
        "the backward pass: least memory. Off keeps them until the backward pass (faster, "
        "more memory).",
        HARDWARE, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_cpu_offload", "bool", False,
        "Keep the sharded weights, gradients and optimizer state in CPU memory and run the "
        "optimizer there (FSDP2's CPUOffloadPolicy); each block is copied to the GPU when used.",
        HARDWARE, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_state_dict_type", "str", "sharded",
        "How checkpoints hold the sharded model and optimizer: sharded (each process writes "
        "its own part with torch.distributed.checkpoint) or full (gathered and written by the "
        "main process). Either resumes with any number of processes.",
        CHECKPOINTS, choices=("sharded", "full"),
        aliases={"SHARDED_STATE_DICT": "sharded", "FULL_STATE_DICT": "full"},
        applies_when=(FSDP,),
    ),
    Option(
        "fsdp_async_checkpointing", "bool", False,
        "Write sharded checkpoints in the background (torch.distributed.checkpoint.async_save): "
        "training continues once the state is copied to CPU memory, and the checkpoint becomes "
        "'latest' when its files are complete.",
        CHECKPOINTS, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_transformer_layer_cls_to_wrap", "list", None,
        "Class names of the denoiser's blocks that get a shard group each (comma-separated). "
        "Unset uses the model family's blocks (e.g. BasicTransformerBlock and ResnetBlock2D "
        "for SDXL, FluxTransformerBlock and FluxSingleTransformerBlock for Flux).",
        HARDWARE, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_auto_wrap_policy", "str", "TRANSFORMER_BASED_WRAP",
        "Which modules get their own shard group: TRANSFORMER_BASED_WRAP (every block named by "
        "--fsdp_transformer_layer_cls_to_wrap), SIZE_BASED_WRAP (every module whose parameters "
        "not already in a wrapped child reach --fsdp_min_num_params, deepest first) or NO_WRAP "
        "(the whole denoiser as one group: least communication, most memory).",
        HARDWARE, choices=FSDP_WRAP_POLICIES, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_min_num_params", "int", 100_000_000,
        "SIZE_BASED_WRAP's threshold, accelerate's name and default (1e8): a module becomes a shard "
        "group of its own when the parameters it holds outside already-wrapped children reach this "
        "many. Smaller values make more, smaller groups (less memory gathered at once, more "
        "communication).",
        HARDWARE, minimum=1, applies_when=(FSDP, SIZE_BASED),
    ),
    Option(
        "fsdp_activation_checkpointing", "bool", False,
        "Recompute each block's activations in the backward pass (the same as "
        "--gradient_checkpointing, which it turns on).",
        HARDWARE, applies_when=(FSDP,),
    ),
    Option(
        "fsdp_cpu_ram_efficient_loading", "bool", False,
        "Read the base weights from disk in the main process only: the other processes build the "
        "denoiser empty (meta device, no weight file opened, no CPU memory for the weights), and "
        "once it is sharded the main process's weights are broadcast into every process's shards. "
        "For bases too big for one copy per process in CPU memory; with one process it changes nothing.",
        HARDWARE, applies_when=(FSDP,),
    ),
    Option(
        "deepspeed_config", "str", None,
        "A DeepSpeed JSON config file (ZeRO stage, offload), used through accelerate's DeepSpeed "
        "plugin. Needs a GPU and the deepspeed package; on a CPU-only machine use --fsdp_enable.",
        HARDWARE,
    ),
)
