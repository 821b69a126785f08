"""The trainer's own counters, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainState:
    seed: int
    global_step: int = 0  # optimizer steps taken
    epoch: int = 0
    samples_seen: int = 0  # over all processes; stays right when a resume changes their number

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.samples_seen = int(state.get("samples_seen", 0))  # 0 in checkpoints from before the counter
