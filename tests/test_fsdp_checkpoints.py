"""Sharded (DCP) checkpoints: written by every process, loadable by any number of processes.

The resharding tests run a small model under torchrun (tests/fsdp_dcp_worker.py):
the state loaded with another process count must equal, value for value, the
gathered state the saving run had, and the next step must continue alike.
The three cases share three launches (one per process count and phase), each
saving or loading into a folder of its own: every case still has its own
writer, its own checkpoint and its own loading run.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simpletuner.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "fsdp_dcp_worker.py"


def _torchrun(processes: int, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={processes}", str(WORKER), *args],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _assert_same(expected: dict, actual: dict, exact: bool) -> None:
    flat_expected, flat_actual = _flatten(expected), _flatten(actual)
    assert flat_expected.keys() == flat_actual.keys()
    for key, value in flat_expected.items():
        if isinstance(value, torch.Tensor):
            if exact:
                assert torch.equal(value, flat_actual[key]), key
            else:
                torch.testing.assert_close(flat_actual[key], value, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert value == flat_actual[key], key


def _flatten(tree: object, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out: dict = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, list):
        out = {}
        for index, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}/{index}"))
        return out
    return {prefix: tree}


CASES = [(2, 1, "save-async"), (1, 2, "save"), (2, 1, "save-full")]


@pytest.fixture(scope="module")
def resharded(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int, str], Path]:
    """Each case's folder after its save (by ``saved_by`` processes) and its load (by ``loaded_by``).

    Saves run before loads, and a launch that loads does so before it saves anything.
    """
    root = tmp_path_factory.mktemp("dcp")
    folders = {case: root / f"{case[2]}-{case[0]}to{case[1]}" for case in CASES}
    for folder in folders.values():
        folder.mkdir()

    def jobs(phase: str, processes: int) -> list[str]:
        chosen = [(mode, folder) for (saved_by, loaded_by, mode), folder in folders.items()
                  if (saved_by if phase == "save" else loaded_by) == processes]
        return [arg for mode, folder in chosen for arg in ((mode if phase == "save" else "load"), str(folder))]

    _torchrun(2, *jobs("save", 2))
    _torchrun(1, *jobs("load", 1), *jobs("save", 1))
    _torchrun(2, *jobs("load", 2))
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("saved_by, loaded_by, save", CASES)
def test_checkpoint_resumes_with_another_process_count(resharded: dict, saved_by: int, loaded_by: int,
                                                        save: str) -> None:
    # 2 -> 1 also covers --fsdp_async_checkpointing (written in the background, published when
    # complete) and --fsdp_state_dict_type full (gathered, written by the main process alone).
    folder = resharded[(saved_by, loaded_by, save)]
    shards = sorted(p.name for p in (folder / "checkpoint-3" / "sharded").glob("*.distcp"))
    writers = 1 if save == "save-full" else saved_by
    assert shards == [f"__{rank}_0.distcp" for rank in range(writers)]  # each writing process wrote its part
    assert not list(folder.glob(".checkpoint-*"))  # published: no partial folder left
    reference = torch.load(folder / "reference.pt", weights_only=True)
    loaded = torch.load(folder / f"loaded-{loaded_by}.pt", weights_only=True)
    optimizer_state = loaded["step3"]["optimizer"]["state"]
    assert optimizer_state and all(s["exp_avg"].abs().sum() > 0 for s in optimizer_state.values())
    _assert_same(reference["step3"], loaded["step3"], exact=True)  # weights, Adam moments, step counts
    _assert_same(reference["step4"], loaded["step4"], exact=False)  # and training continues alike


class _RunsCode:
    """Unpickling this calls a function: what a crafted checkpoint index could do."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["ST_MARKER"]),))


def test_checkpoint_index_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simpletuner.distributed.safe_load import safe_reader

    marker = tmp_path / "ran"
    monkeypatch.setenv("ST_MARKER", str(marker))
    sharded = tmp_path / "checkpoint-1" / "sharded"
    sharded.mkdir(parents=True)
    (sharded / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(ConfigError, match="not a checkpoint index"):
        safe_reader(sharded).read_metadata()
    assert not marker.exists()
