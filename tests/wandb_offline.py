"""Reading back what wandb wrote in offline mode, for tests.

wandb 0.31 no longer ships a Python reader for its ``run-*.wandb`` files.
They are a LevelDB-style log (7-byte file header, then 32 KiB blocks of
records: crc32 (4 bytes), length (2, little endian), type (1)) whose payloads
are wandb's own ``Record`` protobufs, which wandb still ships.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a wandb run file"
    offset, pending = FILE_HEADER, b""
    while offset + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < RECORD_HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + RECORD_HEADER])
        chunk = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        offset += RECORD_HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_offline_run(run_file: Path) -> dict:
    """{"run": Run fields, "history": [{key: value}, ...], "config": {key: value}}."""
    from wandb.proto import wandb_internal_pb2 as pb

    result: dict = {"run": {}, "history": [], "config": {}}
    for payload in _payloads(Path(run_file).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            result["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                      for item in record.history.item})
        elif kind == "run":
            result["run"] = {"name": record.run.display_name, "project": record.run.project}
            for item in record.run.config.update:
                result["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                result["config"][item.key] = json.loads(item.value_json)
    return result
