"""``configure.py``: write a training config a user can trust by answering questions.

The questions, in order: model family and base model (with its flavour where
the family has flavours), what to train (LoRA, LyCORIS with an algorithm and
preset, or the full model), the memory to plan for (a GPU's is detected),
then a proposal that fits it (precision, gradient checkpointing, batch size,
resolution, optimizer; each may be changed), the dataset folder(s), scanned
right there, the caption strategy the folders support, how long to train,
checkpoints and seed, validation, trackers, publishing and the number of GPUs.

The wizard writes into the config folder (``config/`` unless told otherwise):
``config.json``, ``multidatabackend.json``, ``config.env`` and, for LyCORIS,
``lycoris_config.json`` (see :mod:`simpletuner.wizard.files`).

Choices, defaults and help come from the option table and every answer goes
through the same coercion and validation as ``train.py``, so the wizard
cannot offer something the trainer would reject.  Nothing is written until
every question is answered and the files have passed the trainer's loader;
Ctrl-C (exit 130) or end of input (exit 1) leave no files behind.  Existing
files are only replaced after the user says so.  In a real terminal the
questions are arrow-key menus (questionary); piped input or ``--plain``
reads typed lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from simpletuner.config.options import OPTIONS, OPTIONS_BY_NAME
from simpletuner.errors import USER_ERROR_EXIT_CODE, ConfigError
from simpletuner.wizard import checks
from simpletuner.wizard.files import CONFIG_FILE, check, existing, render, write_all
from simpletuner.wizard.questions import ask_option, ask_text, ask_yes_no
from simpletuner.wizard.terminal import InputFn, Terminal, choose_terminal

GIB = 2**30
DEFAULT_SEED = 42
DEFAULT_CHECKPOINTS_KEPT = 3
LYCORIS_PRESETS = {
    "attention+feedforward": {"target_module": ["Attention", "FluxAttention", "FeedForward"]},
    "attention": {"target_module": ["Attention", "FluxAttention"]},
    "lycoris-default": None,  # LyCORIS' own choice of layers
}


class _Cancelled(Exception):
    """The user declined to overwrite existing files."""


def main(
    argv: Optional[Sequence[str]] = None,
    input_fn: Optional[InputFn] = None,
    output_dir: str | os.PathLike = "config",
) -> int:
    """Run the wizard; returns the exit code (0 written, 1 nothing written, 2 refused, 130 Ctrl-C)."""
    parser = argparse.ArgumentParser(
        prog="configure.py",
        description="Answer questions to write config.json, multidatabackend.json and config.env.",
    )
    parser.add_argument(
        "--config_dir", "--config-dir", default=str(output_dir),
        help="folder that receives the files (default: %(default)s)",
    )
    parser.add_argument("--plain", action="store_true",
                        help="typed answers instead of arrow-key menus (piped input is always read this way)")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    from simpletuner.logs import setup_logging

    # Library chatter (torch, torchao, bitsandbytes at import) stays off the console.
    setup_logging(os.environ)
    config_dir = Path(args.config_dir)
    term = choose_terminal(input_fn, args.plain)
    try:
        _confirm_overwrite(config_dir, term)
        answers = ask_everything(term)
        files = render(answers, config_dir)
        check(files, config_dir)
        write_all(files)
    except KeyboardInterrupt:
        print("\ncancelled; nothing was written", file=sys.stderr)
        return 130
    except EOFError:
        print("\nno more input; nothing was written", file=sys.stderr)
        return 1
    except _Cancelled:
        print("keeping the existing files; nothing was written")
        return 1
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    _print_summary(files, config_dir)
    return 0


def _confirm_overwrite(config_dir: Path, term: Terminal) -> None:
    found = existing(config_dir)
    if found and not ask_yes_no(term, f"{', '.join(map(str, found))} already exist. Overwrite?", default=False):
        raise _Cancelled


# ------------------------------------------------------------------ questions


def ask_everything(term: Terminal) -> dict[str, Any]:
    term.say(term.intro)
    a: dict[str, Any] = {}
    _model(term, a)
    _what_to_train(term, a)
    a["output_dir"] = ask_option(term, "output_dir", "Output folder", check=checks.not_a_file)
    _memory_and_proposal(term, a)
    _datasets(term, a)
    _length(term, a)
    _validation(term, a)
    a["report_to"] = ask_option(term, "report_to", "Report to", check=checks.not_none_with_trackers)
    _publishing(term, a)
    a["num_processes"] = _ask_count(term, "Number of GPUs to train on (on each machine)", checks.detected_gpus())
    _machines(term, a)
    return a


def _machines(term: Terminal, a: dict[str, Any]) -> None:
    """Several machines (config.env's TRAINING_NUM_MACHINES ...); one is the usual answer."""
    a["num_machines"] = _ask_count(term, "Number of machines (nodes) training together", 1)
    if a["num_machines"] == 1:
        return
    term.say("  Every machine runs ./train.sh with the same files except TRAINING_MACHINE_RANK "
             "(documentation/DISTRIBUTED.md); put the output folder and caches on shared storage.")
    while True:
        rank = _ask_count(term, "This machine's number (1 = the main machine)", 1) - 1
        if rank < a["num_machines"]:
            break
        term.say(f"  give a number from 1 to {a['num_machines']}")
    a["machine_rank"] = rank
    while not (address := term.ask("Main machine's address (IP or host name the others can reach)", (), "").strip()):
        term.say("  the other machines need it to find the main one")
    a["main_process_ip"] = address
    a["main_process_port"] = _ask_count(term, "Main machine's port", 29500)


def _model(term: Terminal, a: dict[str, Any]) -> None:
    from simpletuner.families.flavours import family_flavours

    a["model_family"] = ask_option(term, "model_family", "Model family", no_default=True)
    flavours = family_flavours(a["model_family"])
    hub_id = None
    if flavours:
        flavour = ask_option(term, "model_flavour", "Flavour", choices=list(flavours), default=next(iter(flavours)))
        hub_id = flavours[flavour]
    else:
        flavour = None
    a["pretrained_model_name_or_path"] = ask_option(
        term, "pretrained_model_name_or_path", "Base model (Hub id or local folder)",
        default=hub_id or checks.SUGGESTED_MODELS.get(a["model_family"]),
        check=lambda value: checks.base_model_problem(value, a["model_family"]),
    )
    # A flavour that names another model than the one given would only warn at every start.
    if flavour and a["pretrained_model_name_or_path"] == hub_id:
        a["model_flavour"] = flavour


def _what_to_train(term: Terminal, a: dict[str, Any]) -> None:
    a["model_type"] = ask_option(term, "model_type", "Train a LoRA or the full model")
    if a["model_type"] != "lora":
        return
    a["lora_type"] = ask_option(term, "lora_type", "LoRA library (standard: PEFT)")
    if a["lora_type"] == "standard":
        a["lora_rank"] = ask_option(term, "lora_rank", "LoRA rank")
        return
    from simpletuner.training.lycoris_config import SUPPORTED_ALGOS

    term.say("\nLyCORIS algorithm (lokr is SimpleTuner's usual choice).")
    algo = _ask_choice(term, "LyCORIS algorithm", SUPPORTED_ALGOS, "lokr")
    term.say("\nWhich layers the LyCORIS adapter trains.")
    preset = _ask_choice(term, "LyCORIS preset", tuple(LYCORIS_PRESETS), "attention+feedforward")
    spec: dict[str, Any] = {"algo": algo, "multiplier": 1.0, "linear_dim": 10000 if algo == "lokr" else 16,
                            "linear_alpha": 1 if algo == "lokr" else 16}
    if algo == "lokr":
        spec["factor"] = 16
    if LYCORIS_PRESETS[preset]:
        spec["apply_preset"] = LYCORIS_PRESETS[preset]
    a["lycoris_spec"] = spec


def _ask_choice(term: Terminal, label: str, choices: Sequence[str], default: str) -> str:
    while True:
        raw = term.ask(label, list(choices), default).strip().lower() or default
        if raw in choices:
            return raw
        term.say(f"  {raw!r} is not offered; choose one of: {', '.join(choices)}")


def _ask_count(term: Terminal, label: str, default: int) -> int:
    while True:
        raw = term.ask(label, (), str(default)).strip() or str(default)
        if raw.isdigit() and int(raw) >= 1:
            return int(raw)
        term.say("  give a whole number, 1 or more")


def _memory_and_proposal(term: Terminal, a: dict[str, Any]) -> None:
    from simpletuner.memory.report import size
    from simpletuner.wizard.proposal import estimate_needed, propose

    gpu = checks.detected_gpu_memory()
    if gpu is not None:
        name, total = gpu
        term.say(f"\nDetected {name} with {total / GIB:.1f} GiB.")
        memory = checks.ask_gib(term, "GPU memory to plan for (GiB)", total / GIB)
        on_gpu = True
    else:
        term.say("\nNo GPU found: this is a CPU run, in system RAM (bf16 or no mixed precision; fp16 needs a GPU).")
        memory = checks.ask_gib(term, "Memory training may use (GiB)", checks.available_ram() / GIB)
        on_gpu = False
    term.say("estimating what fits (from the model's file headers; no weights are loaded) ...")
    proposal = propose(a, memory, on_gpu)
    for note in proposal.notes:
        term.say(f"note: {note}")
    if proposal.needed is not None:
        term.say(f"proposed: needs about {size(proposal.needed)} of {size(memory)} "
                 "(with a margin); accept each value with Enter or change it")
    values = proposal.values
    a["mixed_precision"] = ask_option(term, "mixed_precision", "Mixed precision", default=values["mixed_precision"],
                                      choices=checks.runnable("mixed_precision", checks.mixed_precision_runs_here))
    a["base_model_precision"] = ask_option(term, "base_model_precision", "Quantise the base model",
                                           default=values["base_model_precision"],
                                           choices=checks.runnable("base_model_precision", checks.runs_here))
    a["gradient_checkpointing"] = ask_option(term, "gradient_checkpointing", "Gradient checkpointing",
                                             default=values["gradient_checkpointing"])
    a["train_batch_size"] = ask_option(term, "train_batch_size", "Batch size", default=values["train_batch_size"])
    a["resolution"] = ask_option(term, "resolution", "Resolution", default=values["resolution"],
                                 check=checks.whole_pixels)
    a["optimizer"] = ask_option(term, "optimizer", "Optimizer", default=values["optimizer"],
                                choices=checks.runnable("optimizer", lambda value: checks.optimizer_runs_here(a, value)))
    a["use_ema"] = ask_option(term, "use_ema", "Keep an EMA (averaged) copy of the trained weights",
                              default=values["use_ema"])
    chosen = {name: a[name] for name in values}
    if proposal.needed is not None and chosen != values:
        needed = estimate_needed(a, chosen, on_gpu)
        if isinstance(needed, int):
            fits = "fits" if needed <= memory else "does NOT fit: train.py will refuse to start"
            term.say(f"with your choices the run needs about {size(needed)} of {size(memory)}: {fits}")


def _datasets(term: Terminal, a: dict[str, Any]) -> None:
    from simpletuner.wizard.preview import describe, scan_folder

    defaults = {option.name: option.default for option in OPTIONS}
    term.say("\nFolder with your training images (searched recursively); it is scanned now.")
    folders: list[str] = []
    scans = []
    while True:
        label = "Dataset folder" if not folders else "Another dataset folder (Enter: no more)"
        raw = term.ask(label, (), "").strip()
        if not raw:
            if folders:
                break
            term.say("  an answer is required")
            continue
        scan = scan_folder(raw, int(a["resolution"]), a["train_batch_size"], defaults)
        for line in describe(scan):
            term.say(f"  {line}")
        if scan.problem:
            term.say(f"  {raw} is not added")
            continue
        folders.append(raw)
        scans.append(scan)
    a["dataset_dirs"] = folders
    proposed = "textfile" if all(s.proposed_caption_strategy == "textfile" for s in scans) else "filename"
    a["caption_strategy"] = ask_option(term, "caption_strategy", "Caption strategy", default=proposed)
    if a["caption_strategy"] == "instanceprompt":
        a["instance_prompt"] = ask_text(term, "Caption for every image (instance prompt)")


def _length(term: Terminal, a: dict[str, Any]) -> None:
    a["learning_rate"] = ask_option(term, "learning_rate", "Learning rate")
    term.say("\nHow long to train: a number of steps (e.g. 1000) or of epochs (e.g. 10 epochs).")
    while True:
        raw = term.ask("Training length", (), "1000 steps").strip().lower() or "1000 steps"
        parsed = checks.parse_length(raw)
        if parsed is None:
            term.say("  give steps (1000 or 1000 steps) or epochs (10 epochs), 1 or more")
            continue
        a["max_train_steps"], a["num_train_epochs"] = parsed
        break
    a["checkpointing_steps"] = ask_option(term, "checkpointing_steps", "Save a checkpoint every n steps")
    a["checkpoints_total_limit"] = ask_option(term, "checkpoints_total_limit", "Checkpoints to keep",
                                              default=DEFAULT_CHECKPOINTS_KEPT)
    a["seed"] = ask_option(term, "seed", "Seed", default=DEFAULT_SEED)


def _validation(term: Terminal, a: dict[str, Any]) -> None:
    term.say(f"\n{OPTIONS_BY_NAME['validation_prompt'].help}")
    prompt = term.ask("Validation prompt (Enter: no validation images)", (), "").strip()
    if not prompt:
        return
    a["validation_prompt"] = prompt
    a["validation_steps"] = ask_option(term, "validation_steps", "Validation images every n steps")
    # More prompts go into a prompt library beside config.json (--user_prompt_library).
    library: dict[str, str] = {}
    while more := term.ask("Another validation prompt (Enter: no more)", (), "").strip():
        library[_shortname(more, library)] = more
    if library:
        a["prompt_library"] = library


def _shortname(prompt: str, taken: dict[str, str]) -> str:
    from simpletuner.validation.prompts import safe_shortname

    name = safe_shortname("_".join(prompt.split()[:4]).lower())
    unique, number = name, 2
    while unique in taken or unique == "validation":  # "validation" names --validation_prompt's images
        unique, number = f"{name}_{number}", number + 1
    return unique


def _publishing(term: Terminal, a: dict[str, Any]) -> None:
    term.say(f"\n{OPTIONS_BY_NAME['push_to_hub'].help}")
    if not ask_yes_no(term, "Upload the result to the Hugging Face Hub?", default=False):
        return
    a["push_to_hub"] = True
    a["hub_model_id"] = ask_option(term, "hub_model_id", "Hub repository (user/name or name)",
                                   check=checks.hub_model_id_problem, no_default=True)
    term.say("  no token is written into any file: log in once with `hf auth login` or set HF_TOKEN when training")


# -------------------------------------------------------------------- summary


def _print_summary(files: dict[Path, str], config_dir: Path) -> None:
    print()
    for path in files:
        print(f"wrote {path}")
    print(f"check it first: {_launch(config_dir)} --dry_run")
    print(f"then train:     {_launch(config_dir)}")


def _launch(config_dir: Path) -> str:
    """The command that reads these files, config.env included."""
    folder = config_dir.resolve()
    standard = Path.cwd().resolve() / "config"
    if folder == standard:
        return "./train.sh"
    if folder.parent == standard:
        return f"ENV={folder.name} ./train.sh"
    return f"CONFIG_PATH={config_dir / CONFIG_FILE} ./train.sh"


if __name__ == "__main__":
    raise SystemExit(main())
