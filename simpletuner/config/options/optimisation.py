"""Options: training length, batch, optimizer and learning-rate schedule."""

from __future__ import annotations

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    LENGTH,
    LR_SCHEDULERS,
    OPTIMIZER,
    OPTIMIZERS,
    SCHEDULE,
    TRAIN_TE,
)

OPTIONS: tuple[Option, ...] = (
    # --------------------------------------------- Training length and batch
    Option(
        "train_batch_size", "int", 1,
        "Samples per batch on each process.",
        LENGTH, minimum=1,
    ),
    Option(
        "gradient_accumulation_steps", "int", 1,
        "Batches whose gradients are summed before each optimizer step; raises the "
        "effective batch size without raising memory use.",
        LENGTH, minimum=1,
    ),
    Option(
        "max_train_steps", "int", 0,
        "Stop after this many optimizer steps. 0 leaves the length to "
        "--num_train_epochs.",
        LENGTH, minimum=0,
    ),
    Option(
        "num_train_epochs", "int", 1,
        "Number of passes over the whole dataset. 0 leaves the length to "
        "--max_train_steps.",
        LENGTH, minimum=0,
    ),
    Option(
        "ignore_final_epochs", "bool", False,
        "Keep training until --max_train_steps even when the epoch count, "
        "recomputed after a dataset change, would end the run sooner. Always "
        "the case here: a set --max_train_steps alone decides when a run stops.",
        LENGTH,
    ),
    Option(
        "seed", "int", None,
        "Random seed that makes a run reproducible. Unset leaves the run unseeded.",
        LENGTH, minimum=0,
    ),
    Option(
        "seed_for_each_device", "bool", True,
        "Seed each process's global random state with --seed plus its rank, so "
        "processes do not draw the same dropout masks; off gives every process "
        "--seed itself. Noise and timesteps differ per process either way.",
        LENGTH,
    ),
    # ------------------------------------------------------------- Optimizer
    Option(
        "optimizer", "str", "adamw_bf16",
        "Optimizer algorithm. Several need particular hardware or libraries (fp8 "
        "and paged variants need a CUDA accelerator).",
        OPTIMIZER, choices=OPTIMIZERS,
    ),
    Option(
        "optimizer_config", "str", None,
        "Extra optimizer settings as comma-separated key=value pairs, for example "
        "d_coef=0.1 for prodigy.",
        OPTIMIZER,
    ),
    Option(
        "optimizer_beta1", "float", None,
        "First-moment decay of Adam-style optimizers. Unset keeps the optimizer's "
        "own default.",
        OPTIMIZER, minimum=0, maximum=1,
    ),
    Option(
        "optimizer_beta2", "float", None,
        "Second-moment decay of Adam-style optimizers. Unset keeps the optimizer's "
        "own default.",
        OPTIMIZER, minimum=0, maximum=1,
    ),
    Option(
        "adam_weight_decay", "float", 1e-2,
        "Weight decay strength applied by the optimizer.",
        OPTIMIZER, minimum=0,
    ),
    Option(
        "adam_epsilon", "float", 1e-8,
        "Small constant in the optimizer's denominator that keeps updates finite.",
        OPTIMIZER, minimum=0,
    ),
    Option(
        "max_grad_norm", "float", 2.0,
        "Gradient clipping limit (--grad_clip_method): the largest overall norm, "
        "or the largest value of any one gradient element. 0 turns clipping off.",
        OPTIMIZER, minimum=0,
    ),
    Option(
        "grad_clip_method", "str", "value",
        "How --max_grad_norm clips: value clamps each gradient element to "
        "[-max, max]; norm rescales all gradients together so their overall norm "
        "is at most max (and logs that norm as grad_norm).",
        OPTIMIZER, choices=("value", "norm"),
    ),
    Option(
        "set_grads_to_none", "bool", False,
        "After each optimizer step, free the gradients (set them to None) instead "
        "of filling them with zeros: less memory between steps.",
        OPTIMIZER,
    ),
    Option(
        "gradient_precision", "str", "unmodified",
        "Precision of the gradients the optimizer sees: fp32 or unmodified (that "
        "of the trained weights). Trained weights are fp32 here (LoRA and full "
        "fine-tunes alike), so both give fp32 gradients.",
        OPTIMIZER, choices=("unmodified", "fp32"),
    ),
    # ------------------------------------------------ Learning rate schedule
    Option(
        "learning_rate", "float", 1e-4,
        "Peak learning rate, reached once any warmup is over. LoRA runs usually "
        "sit far higher than full fine-tunes.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "text_encoder_lr", "float", None,
        "Peak learning rate of the text encoder's LoRA under --train_text_encoder, "
        "scaled and scheduled like --learning_rate. Unset: --learning_rate.",
        SCHEDULE, minimum=0,
        applies_when=(TRAIN_TE,),
    ),
    Option(
        "lr_scheduler", "str", "constant",
        "Shape of the learning rate over the run.",
        SCHEDULE, choices=LR_SCHEDULERS,
    ),
    Option(
        "lr_warmup_steps", "int", 0,
        "Optimizer steps over which the learning rate ramps up from zero.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_num_cycles", "int", 1,
        "How many times cosine_with_restarts restarts its cycle.",
        SCHEDULE, minimum=1,
    ),
    Option(
        "lr_end", "float", 4e-7,
        "Learning rate the polynomial schedule arrives at by the final step.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_power", "float", 1.0,
        "Exponent of the polynomial schedule; 1.0 is a straight line.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_scale", "bool", False,
        "Multiply the learning rate by the effective batch size (batch size x "
        "accumulation steps x processes).",
        SCHEDULE,
    ),
)
