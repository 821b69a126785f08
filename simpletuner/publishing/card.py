"""The model card: ``README.md`` in the results folder, written at the end of every run.

It is built from three things only, so nothing else (a secret among them) can
reach it: the run's option values as saved in ``training_config.json``
(secrets already masked; only named options are read), the run summary the
trainer saves beside it (``run_summary.json``: steps, datasets, trained
size), and the latest validation manifest
(``validation_images/step_NNNNNN/manifest.json``).  The same inputs let
``python -m simpletuner.publish`` write the card again for another repository.

A card carries a marker line; a README.md without it is the user's own and
is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
SUMMARY_FILE = "run_summary.json"
VALIDATION_FOLDER = "validation_images"
MARKER = "<!-- written by SimpleTuner: edit freely, but remove this line or it will be rewritten -->"
LORA_FILE = "pytorch_lora_weights.safetensors"


# -- validation images --------------------------------------------------------------
def validation_steps(output_dir: Path) -> list[Path]:
    """Folders ``validation_images/step_NNNNNN`` holding a manifest, oldest first."""
    root = Path(output_dir) / VALIDATION_FOLDER
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "manifest.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_validation(output_dir: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """(folder, manifest) of the newest readable validation step, or None."""
    for folder in reversed(validation_steps(output_dir)):
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            images = [i for i in manifest.get("images", []) if (folder / i["file"]).is_file()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.debug("skipping unreadable validation manifest in %s: %s", folder, error)
            continue
        return folder, {**manifest, "images": images}
    return None


# -- the summary the trainer saves ---------------------------------------------------
def write_summary(output_dir: Path, summary: Mapping[str, Any]) -> None:
    _write_atomically(Path(output_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))


def read_json_file(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the card ---------------------------------------------------------------------
def write_card(output_dir: Path, values: Mapping[str, Any], summary: Mapping[str, Any],
               repo_id: Optional[str] = None) -> Optional[Path]:
    """Write README.md; returns its path, or None when the user's own README.md is kept."""
    path = Path(output_dir) / CARD_FILE
    if path.is_file() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        logger.info("kept %s: it was not written by SimpleTuner", path)
        return None
    _write_atomically(path, render_card(values, summary, output_dir, repo_id))
    return path


def render_card(values: Mapping[str, Any], summary: Mapping[str, Any], output_dir: Path,
                repo_id: Optional[str] = None) -> str:
    from huggingface_hub import ModelCardData

    output_dir = Path(output_dir)
    validation = latest_validation(output_dir)
    trigger = _trigger(summary)
    tags = ["diffusers", "text-to-image", str(summary.get("family") or values.get("model_family")),
            _kind_tag(values), "simpletuner"]
    if not values.get("model_card_safe_for_work"):
        tags.append("not-for-all-audiences")
    widget = []
    if validation is not None:
        folder, manifest = validation
        rel = folder.relative_to(output_dir).as_posix()
        widget = [{"text": image.get("prompt") or "", "output": {"url": f"{rel}/{image['file']}"}}
                  for image in manifest["images"]]
    data = ModelCardData(
        base_model=str(values.get("pretrained_model_name_or_path")), library_name="diffusers",
        tags=tags, pipeline_tag="text-to-image", instance_prompt=trigger, widget=widget or None,
    )
    name = (repo_id or str(values.get("hub_model_id") or output_dir.name)).split("/")[-1]
    parts = [f"---\n{data.to_yaml()}\n---", MARKER, f"# {name}"]
    if values.get("model_card_note"):
        parts.append(str(values["model_card_note"]))
    parts.append(f"A {_kind_words(values, summary)} of `{values.get('pretrained_model_name_or_path')}` "
                 f"({summary.get('family') or values.get('model_family')}), trained with SimpleTuner.")
    if trigger:
        parts.append(f"Trigger words: `{trigger}` (put them in your prompt).")
    parts += [_training_table(values, summary), _datasets_table(summary)]
    if validation is not None:
        parts.append(_gallery(validation, output_dir))
    parts += [_usage(values, summary, output_dir, repo_id, validation)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _kind_tag(values: Mapping[str, Any]) -> str:
    if values.get("model_type") == "full":
        return "full"
    return "lycoris" if values.get("lora_type") == "lycoris" else "lora"


def _kind_words(values: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return {"full": "full fine-tune", "lycoris": "LyCORIS adapter", "lora": "LoRA"}[_kind_tag(values)]


def _trigger(summary: Mapping[str, Any]) -> Optional[str]:
    prompts = [d.get("instance_prompt") for d in summary.get("datasets", []) if d.get("instance_prompt")]
    return prompts[0] if prompts else None


def _training_table(values: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    rows = [
        ("base model", f"`{values.get('pretrained_model_name_or_path')}`"),
        ("model family", summary.get("family") or values.get("model_family")),
        ("trained", summary.get("adapter") or _kind_words(values, summary)),
        ("steps", f"{summary.get('steps')} ({summary.get('epochs')} epoch(s))"),
        ("learning rate", f"{values.get('learning_rate')}, {values.get('lr_scheduler')} schedule, "
                          f"{values.get('lr_warmup_steps')} warm-up steps"),
        ("optimizer", values.get("optimizer")),
        ("batch", f"{values.get('train_batch_size')} x {values.get('gradient_accumulation_steps')} accumulation "
                  f"x {summary.get('processes', 1)} process(es)"),
        ("precision", f"mixed precision {values.get('mixed_precision')}, base weights "
                      f"{values.get('base_model_precision')}"),
        ("EMA", f"decay {values.get('ema_decay')} (in `ema/`)" if values.get("use_ema") else "no"),
        ("LoRA file layout", values.get("lora_format")) if _kind_tag(values) == "lora" else None,
        ("seed", summary.get("seed", values.get("seed"))),
    ]
    lines = ["## Training", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in (r for r in rows if r)]
    return "\n".join(lines)


def _datasets_table(summary: Mapping[str, Any]) -> str:
    datasets = summary.get("datasets") or []
    if not datasets:
        return ""
    lines = ["## Datasets", "", "| dataset | images | resolution | captions |", "| --- | --- | --- | --- |"]
    for d in datasets:
        lines.append(f"| {d.get('id')} | {d.get('images')} | {d.get('resolution')} | {d.get('captions')} |")
    return "\n".join(lines)


def _gallery(validation: tuple[Path, dict[str, Any]], output_dir: Path) -> str:
    folder, manifest = validation
    rel = folder.relative_to(output_dir).as_posix()
    lines = [f"## Validation images (step {manifest.get('step')})", "", "<Gallery />", ""]
    for image in manifest["images"]:
        prompt = str(image.get("prompt") or "").replace("\n", " ")
        lines.append(f"![{prompt}]({rel}/{image['file']})  ")
        lines.append(f"*{prompt}* ({image.get('width')}x{image.get('height')}, seed {image.get('seed')})")
        lines.append("")
    return "\n".join(lines).rstrip()


def _usage(values: Mapping[str, Any], summary: Mapping[str, Any], output_dir: Path, repo_id: Optional[str],
           validation: Optional[tuple[Path, dict[str, Any]]]) -> str:
    base = str(values.get("pretrained_model_name_or_path"))
    source = repo_id or str(Path(output_dir).resolve())
    width, height = summary.get("sample_size") or (1024, 1024)
    prompt = _example_prompt(values, summary, validation)
    guidance = values.get("validation_guidance", 7.5)
    steps = values.get("validation_num_inference_steps", 30)
    kind = _kind_tag(values)
    lines = ["import torch", "from diffusers import DiffusionPipeline", ""]
    device = 'device = "cuda" if torch.cuda.is_available() else "cpu"'
    dtype = "dtype = torch.bfloat16 if device == \"cuda\" else torch.float32"
    if kind == "full":
        lines += [device, dtype, f"pipeline = DiffusionPipeline.from_pretrained({source!r}, torch_dtype=dtype)"]
    else:
        lines += [device, dtype, f"pipeline = DiffusionPipeline.from_pretrained({base!r}, torch_dtype=dtype)"]
        if kind == "lora":
            lines.append(f"pipeline.load_lora_weights({source!r}, weight_name={LORA_FILE!r})")
        else:
            component = summary.get("denoiser_component", "unet")
            fetch = (f"hf_hub_download({source!r}, {LORA_FILE!r})" if repo_id
                     else repr(str(Path(source) / LORA_FILE)))
            if repo_id:
                lines.insert(2, "from huggingface_hub import hf_hub_download")
            lines.insert(2, "from lycoris import create_lycoris_from_weights")
            lines += [f"wrapper, _ = create_lycoris_from_weights(1.0, {fetch}, pipeline.{component})",
                      "wrapper.merge_to()"]
    lines += [
        "pipeline.to(device)",
        f"image = pipeline({prompt!r}, num_inference_steps={steps}, guidance_scale={guidance}, "
        f"width={width}, height={height}, generator=torch.Generator().manual_seed(0)).images[0]",
        'image.save("output.png")',
    ]
    text = ["## Use it with diffusers", "", "```python", *lines, "```"]
    if kind == "lora" and values.get("lora_format") == "comfyui":
        text += ["", "## ComfyUI", "",
                 f"`{LORA_FILE}` is in the kohya layout ComfyUI reads: put it in `ComfyUI/models/loras/` "
                 "and load it with a **LoraLoader** node between the checkpoint loader and the sampler."]
    return "\n".join(text)


def _example_prompt(values: Mapping[str, Any], summary: Mapping[str, Any],
                    validation: Optional[tuple[Path, dict[str, Any]]]) -> str:
    if validation is not None and validation[1]["images"] and validation[1]["images"][0].get("prompt"):
        return str(validation[1]["images"][0]["prompt"])
    return str(values.get("validation_prompt") or _trigger(summary) or "a photo")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
