"""An exponential moving average of the trained weights (``--use_ema``).

Built on diffusers' ``EMAModel``, whose decay warms up as
``min(ema_decay, (1 + n) / (10 + n))`` over its n-th update, so early, noisy
weights do not dominate the average.  The averaged copy lives on the CPU by
default (``--ema_device cpu`` or ``--ema_cpu_only``) to spare accelerator
memory; updates then read the live weights over to the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch


class EmaWeights:
    def __init__(self, parameters: list[torch.nn.Parameter], config: Any, accelerator_device: torch.device) -> None:
        from diffusers.training_utils import EMAModel

        self.parameters = parameters
        on_cpu = config.ema_cpu_only or config.ema_device == "cpu"
        self.device = torch.device("cpu") if on_cpu else accelerator_device
        self.interval = config.ema_update_interval or 1
        self.model = EMAModel(self._live(), decay=config.ema_decay)

    def _live(self) -> list[torch.Tensor]:
        # EMAModel averages only tensors that require grad (the rest it copies),
        # so the detached views it is given must say they are trained.
        return [p.detach().to(self.device).requires_grad_(True) for p in self.parameters]

    def after_optimizer_step(self, global_step: int) -> None:
        """Update every ``--ema_update_interval`` optimizer steps."""
        if global_step % self.interval == 0:
            self.model.step(self._live())

    @property
    def updates(self) -> int:
        return self.model.optimization_step

    def averaged(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.shadow_params]

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the live parameters."""
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for live, average in zip(self.parameters, self.model.shadow_params):
                live.copy_(average.to(live.device, live.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for live, original in zip(self.parameters, saved):
                    live.copy_(original)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
        self.model.to(self.device)


def build_ema(parameters: list[torch.nn.Parameter], config: Any, device: torch.device) -> Optional[EmaWeights]:
    return EmaWeights(parameters, config, device) if config.use_ema else None
