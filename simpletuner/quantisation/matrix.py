"""The support matrix: which quantised-base combinations work, and why not.

One row per ``--base_model_precision`` says on which hardware it runs, which
adapters, whether a full fine-tune, torch.compile, several processes and
quantised activations work with it.  :func:`check` reads the rows for config
validation (exit code 2, one line, before anything loads) and
``simpletuner.config.docgen`` prints them as ``documentation/QUANTISATION.md``.

Every "works" claim is backed by a test: CPU cells by tests that train tiny
models (tests/test_quantisation_training.py), GPU cells by
``benchmarks/quantisation_gpu.py`` run on a GPU machine.  Refusals carry the
reason found when the cell was tried (library versions in STACK_NOTES.md).

Import-light: hardware is passed in (:func:`detect_hardware` imports torch),
so tests ask about CUDA cells on a CPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from simpletuner.quantisation.precisions import NO_CHANGE, PRECISION_NAMES, get_precision

CPU, CUDA, MPS = "cpu", "cuda", "mps"
ANY_CAPABILITY = (0, 0)
# The LyCORIS algorithms --lycoris_config accepts (training/lycoris_config.py).
LYCORIS_ALGOS = ("lora", "locon", "loha", "lokr", "full", "glora", "diag-oft", "boft")
# LoRA initialisations that rewrite the base weights, impossible on quantised ones.
BASE_REWRITING_INITS = ("pissa", "olora")


@dataclass(frozen=True)
class Hardware:
    """Where the run trains: ``cpu``, ``mps``, or ``cuda`` with its compute capability."""

    kind: str
    capability: Optional[tuple[int, int]] = None

    def describe(self) -> str:
        if self.kind == CUDA and self.capability:
            return f"a CUDA GPU of compute capability {self.capability[0]}.{self.capability[1]}"
        return {CPU: "a CPU without a GPU", MPS: "Apple MPS", CUDA: "a CUDA GPU"}[self.kind]


def detect_hardware() -> Hardware:
    """The accelerator this process would train on."""
    import torch

    if torch.cuda.is_available():
        return Hardware(CUDA, tuple(torch.cuda.get_device_capability()))
    if torch.backends.mps.is_available():
        return Hardware(MPS)
    return Hardware(CPU)


@dataclass(frozen=True)
class Combination:
    """The options of a run that decide whether a precision can work."""

    precision: str
    model_type: str = "lora"
    lora_type: str = "standard"
    lycoris_algo: Optional[str] = None
    lora_init_type: str = "default"
    optimizer: str = "adamw_bf16"
    dynamo_backend: Optional[str] = None
    num_processes: int = 1
    quantize_activations: bool = False


@dataclass(frozen=True)
class Row:
    """What one precision supports.

    ``cuda`` is the lowest compute capability that runs it (None: not on
    CUDA); ``lycoris`` the algorithms that train on it; the ``*_why`` fields
    are the reasons printed when a cell is refused.
    """

    precision: str
    cpu: bool
    cuda: Optional[tuple[int, int]]
    mps: bool
    lycoris: tuple[str, ...]
    dynamo: bool
    multi_process: bool
    activations: bool
    hardware_why: str = ""
    lycoris_why: str = ""
    dynamo_why: str = ""
    multi_process_why: str = ""
    activations_why: str = ""


_TORCHAO_LYCORIS = ("LyCORIS adds its delta to the weight tensor, an operation torchao's quantised tensors "
                    "do not implement (NotImplementedError, SimpleTuner #2612)")
_TORCHAO_DDP = "DistributedDataParallel cannot broadcast torchao's quantised tensors (aten.view not implemented)"
_NO_ACTIVATIONS = "training through quantised activations is not supported by this backend"
_QUANTO_ACTIVATIONS = ("optimum-quanto quantises activations only with calibration, which "
                       "no training recipe here performs")

ROWS: tuple[Row, ...] = (
    Row(NO_CHANGE, True, ANY_CAPABILITY, True, LYCORIS_ALGOS, True, True, False,
        activations_why="--quantize_activations needs a quantised --base_model_precision"),
    Row("int8-quanto", True, ANY_CAPABILITY, True, LYCORIS_ALGOS, True, True, False,
        activations_why=_QUANTO_ACTIVATIONS),
    Row("int4-quanto", True, ANY_CAPABILITY, True, LYCORIS_ALGOS, True, True, False,
        activations_why=_QUANTO_ACTIVATIONS),
    Row("int2-quanto", True, ANY_CAPABILITY, True, LYCORIS_ALGOS, True, True, False,
        activations_why=_QUANTO_ACTIVATIONS),
    Row("fp8-quanto", True, (8, 0), False, LYCORIS_ALGOS, False, True, False,
        hardware_why="float8 weights need the MARLIN kernels of compute capability 8.0+ (MPS has no float8)",
        dynamo_why="optimum-quanto's float8 layers do not compile with inductor (SimpleTuner switches "
                   "compilation off for them)",
        activations_why=_QUANTO_ACTIVATIONS),
    Row("fp8uz-quanto", True, (8, 0), False, LYCORIS_ALGOS, True, True, False,
        hardware_why="float8 (e4m3fnuz) weights need compute capability 8.0+ (MPS has no float8)",
        activations_why=_QUANTO_ACTIVATIONS),
    Row("int8-torchao", True, ANY_CAPABILITY, True, (), True, False, False,
        lycoris_why=_TORCHAO_LYCORIS, multi_process_why=_TORCHAO_DDP, activations_why=_NO_ACTIVATIONS
        + " (torchao's dynamic int8 activations fail at backward)"),
    Row("fp8-torchao", True, (8, 9), False, (), True, False, False,
        hardware_why="torchao float8 needs compute capability 8.9+ (Ada, Hopper or newer; MPS has no float8)",
        lycoris_why=_TORCHAO_LYCORIS, multi_process_why=_TORCHAO_DDP, activations_why=_NO_ACTIVATIONS),
    Row("nf4-bnb", False, (7, 0), False, (), True, True, False,
        hardware_why="bitsandbytes 4-bit quantisation runs only on a CUDA GPU (7.0+)",
        lycoris_why="LyCORIS is not built for bitsandbytes 4-bit layers; the QLoRA recipe is a PEFT LoRA",
        activations_why=_NO_ACTIVATIONS),
)
ROWS_BY_PRECISION: dict[str, Row] = {row.precision: row for row in ROWS}
assert tuple(ROWS_BY_PRECISION) == PRECISION_NAMES, "one row per precision, in the option's order"

FULL_WHY = "a full fine-tune would train the quantised weights, which no backend can update"
INIT_WHY = "--lora_init_type {init} rewrites the base weights, which are quantised and frozen"


def runs_on(row: Row, hardware: Hardware) -> bool:
    if hardware.kind == CPU:
        return row.cpu
    if hardware.kind == MPS:
        return row.mps
    if row.cuda is None:
        return False
    return hardware.capability is None or tuple(hardware.capability) >= row.cuda


def problem(combination: Combination, hardware: Hardware) -> Optional[tuple[str, Optional[str]]]:
    """Why ``combination`` cannot work on ``hardware``, with a fix that is not another
    precision (None: another precision is the fix); None when it works."""
    row = ROWS_BY_PRECISION[get_precision(combination.precision).name]
    quantised = combination.precision != NO_CHANGE
    if not runs_on(row, hardware):
        return f"cannot run on {hardware.describe()}: {row.hardware_why}", None
    if quantised and combination.model_type == "full":
        return FULL_WHY, "use --model_type lora"
    if combination.model_type == "lora" and combination.lora_type == "lycoris":
        if combination.lycoris_algo not in row.lycoris:
            return f"LyCORIS {combination.lycoris_algo} does not train on it: {row.lycoris_why}", None
    if quantised and combination.model_type == "lora" and combination.lora_init_type in BASE_REWRITING_INITS:
        return INIT_WHY.format(init=combination.lora_init_type), "use --lora_init_type default"
    if combination.dynamo_backend not in (None, "no") and not row.dynamo:
        return (f"TRAINING_DYNAMO_BACKEND={combination.dynamo_backend} does not work with it: {row.dynamo_why}",
                None)
    if combination.num_processes > 1 and not row.multi_process:
        return f"{combination.num_processes} processes do not work with it: {row.multi_process_why}", None
    if combination.quantize_activations and not row.activations:
        return f"--quantize_activations is refused: {row.activations_why}", "remove --quantize_activations"
    return None


def alternatives(combination: Combination, hardware: Hardware) -> list[str]:
    """Quantised precisions that would work for the same run on the same hardware."""
    candidates = [replace(combination, precision=name) for name in PRECISION_NAMES if name != NO_CHANGE]
    return [c.precision for c in candidates if problem(c, hardware) is None]


def check(combination: Combination, hardware: Hardware, option: str = "--base_model_precision") -> Optional[str]:
    """One line naming the combination, why it fails and what would work; None when it works."""
    found = problem(combination, hardware)
    if found is None:
        return None
    why, fix = found
    named = f"{option}={combination.precision}"
    if combination.model_type == "full":
        named += " with --model_type full"
    elif combination.lora_type == "lycoris":
        named += f" with LyCORIS {combination.lycoris_algo}"
    others = alternatives(combination, hardware)[:2]
    if fix is None and others:
        fix = f"on {hardware.describe()} use " + " or ".join(others)
    elif fix is None:
        fix = f"use {option} no_change"
    elif combination.precision != NO_CHANGE:
        fix += f" or {option} no_change"
    return f"{named}: {why}; {fix}"
