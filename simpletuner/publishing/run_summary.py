"""The facts about a run the model card states, gathered once training is planned.

Plain values only (saved as ``run_summary.json``), picked field by field:
nothing from a dataset's storage settings (S3 keys live there) is read.
"""

from __future__ import annotations

from typing import Any


def run_summary(config: Any, family: Any, trainable: Any, data: Any, total_steps: int, processes: int,
                seed: int) -> dict[str, Any]:
    report = data.report
    datasets = []
    for dataset in data.backends.image_datasets:
        buckets = report.counts.get(dataset.id, {})
        unit = "px" if dataset.resolution_type == "pixel" else f" ({dataset.resolution_type})"
        datasets.append({
            "id": dataset.id,
            "images": sum(buckets.values()),
            "resolution": f"{dataset.resolution}{unit}",
            "captions": dataset.caption_strategy,
            "instance_prompt": _trigger(dataset),
            "regularisation": bool(dataset.is_regularisation_data),
        })
    return {
        "family": family.name,
        "denoiser_component": family.denoiser_component,
        "adapter": _adapter(config, trainable),
        "steps": total_steps,
        "epochs": None,
        "processes": processes,
        "seed": seed,
        "sample_size": list(_most_trained_size(report.counts) or (family.default_resolution,) * 2),
        "datasets": datasets,
    }


def _trigger(dataset: Any) -> Any:
    uses_it = (dataset.caption_strategy == "instanceprompt" or dataset.prepend_instance_prompt
               or dataset.only_instance_prompt)
    return dataset.instance_prompt if uses_it and dataset.instance_prompt else None


def _adapter(config: Any, trainable: Any) -> str:
    if config.model_type == "full":
        return "full fine-tune"
    if config.lora_type == "lycoris":
        return f"LyCORIS{trainable.summary()}"
    alpha = config.lora_alpha if config.lora_alpha is not None else config.lora_rank
    return f"LoRA{trainable.summary()}, alpha {alpha:g}"


def _most_trained_size(counts: dict[str, dict[tuple[int, int], int]]) -> Any:
    totals: dict[tuple[int, int], int] = {}
    for buckets in counts.values():
        for size, images in buckets.items():
            totals[size] = totals.get(size, 0) + images
    return max(totals, key=lambda size: totals[size]) if totals else None
