"""A dataset folder scanned as training would see it, before anything is written.

Discovery reads image headers only (as the trainer does); its header cache
goes to a scratch folder here, so a scan leaves nothing in the user's folders.
The result says what the wizard shows: images found, skipped and why,
captions present, the bucket table and steps per epoch, and which caption
strategy the folder supports.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from simpletuner.errors import UserError


@dataclass(frozen=True)
class FolderScan:
    folder: str
    usable: int  # images training would use at this resolution
    with_caption_file: int  # of those, how many have a .txt caption beside them
    summary: str  # found / usable / skipped with reasons
    table: str  # the bucket table with batches
    batches_per_epoch: int
    problem: Optional[str] = None  # why nothing could be trained from it

    @property
    def proposed_caption_strategy(self) -> str:
        """textfile when every image has its .txt; else the file name (SimpleTuner's default)."""
        return "textfile" if self.usable and self.with_caption_file == self.usable else "filename"


def scan_folder(folder: str, resolution: int, batch_size: int, defaults: dict[str, Any]) -> FolderScan:
    """Discover and plan ``folder`` at ``resolution`` for batches of ``batch_size``."""
    from simpletuner.data.pipeline import plan_one
    from simpletuner.data.report import check_buckets
    from simpletuner.data.schema import parse_data_backend_config

    path = Path(folder).expanduser()
    if not path.exists():
        return _empty(folder, f"{folder} does not exist (relative to {Path.cwd()}); create it and put your images there")
    if not path.is_dir():
        return _empty(folder, f"{folder} is a file; give the folder that holds your images")
    with tempfile.TemporaryDirectory(prefix="wizard-scan-") as scratch:
        entries = [{"id": "scan", "type": "local", "instance_data_dir": str(path), "cache_dir_vae": scratch,
                    "caption_strategy": "filename", "resolution": resolution},
                   {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
                    "cache_dir": scratch}]
        try:
            dataset = parse_data_backend_config(entries, defaults, "scan").image_datasets[0]
            found, planned, _skipped = plan_one(dataset, show_progress=False)
        except UserError as error:
            return _empty(folder, str(error))
    summary = found.summary().replace("dataset 'scan'", folder, 1)
    if not planned:
        return _empty(folder, f"no usable images in {folder}: add .jpg/.png/.webp images (skip reasons above)", summary)
    captioned = sum((path / record.relative_path).with_suffix(".txt").is_file() for record in found.records)
    try:
        report = check_buckets({"scan": planned}, batch_size)
    except UserError as error:
        return FolderScan(folder, len(planned), captioned, summary, "", 0, str(error))
    table = report.table(epoch_line=False).replace("scan ", "     ", 1)
    return FolderScan(folder, len(planned), captioned, summary, table, report.batches_per_epoch)


def _empty(folder: str, problem: str, summary: str = "") -> FolderScan:
    return FolderScan(folder, 0, 0, summary, "", 0, problem)


def describe(scan: FolderScan) -> list[str]:
    """What the wizard prints for a scanned folder."""
    lines = [line for line in scan.summary.splitlines() if line]
    if scan.problem:
        return lines + [f"  {scan.problem}"]
    missing = scan.usable - scan.with_caption_file
    lines.append(f"captions: {scan.with_caption_file} of {scan.usable} images have a .txt caption"
                 + (f" ({missing} without)" if missing else ""))
    lines += scan.table.splitlines()
    lines.append(f"{scan.batches_per_epoch} steps per epoch at this batch size")
    return lines
