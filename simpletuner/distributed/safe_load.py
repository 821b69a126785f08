"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP reads its ``.metadata`` index with plain ``pickle`` and non-tensor
entries (optimizer settings) with ``torch.load(weights_only=False)``, either
of which runs whatever a crafted file names.  Every other checkpoint part is
read without pickle (training/state_files.py); these two are read here with
an unpickler that builds only DCP's own records and with torch's weights-only
loader.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

# What a DCP ``.metadata`` file may name; DCP reads it with plain pickle, which
# would run whatever a file from someone else names (see safe_reader).
_METADATA_GLOBALS = frozenset({
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorProperties", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")})


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                    torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def safe_reader(path: Path) -> Any:
    """DCP's file reader, with the index read by an unpickler that builds only DCP's own records.

    Like every other checkpoint part (training/state_files.py), loading a
    checkpoint from someone else must not be able to run code.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as handle:
                try:
                    metadata = _MetadataUnpickler(handle).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
                    from simpletuner.errors import ConfigError

                    raise ConfigError(f"{path}/.metadata is not a checkpoint index SimpleTuner reads ({error}); "
                                      "resume from another checkpoint") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def safe_planner() -> Any:
    """DCP's load planner, reading non-tensor entries (optimizer settings) with torch's weights-only loader."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            from torch.distributed.checkpoint._traverse import set_element

            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()
