"""Schedule-free AdamW that keeps small updates to bf16/fp16 weights (Kahan summation).

Schedule-free AdamW (the ``schedulefree`` package) moves two copies of every
weight each step: the weights themselves (y) and the optimiser's own sequence
z.  In bf16 an update smaller than half a unit in the last place of a weight
rounds away, so with a small learning rate low-precision weights stop moving.
Kahan summation keeps, for each of y and z, the rounding error of the last
write in a buffer of the weight's dtype and adds it back before the next one,
so the stored value plus its error tracks the exact sum.  The step itself is
done in fp32.

Weights in fp32, or every weight with ``kahan_sum=False``, take the package's
own step unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import schedulefree
import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


class AdamWScheduleFreeKahan(schedulefree.AdamWScheduleFree):
    """``schedulefree.AdamWScheduleFree`` plus ``kahan_sum`` for low-precision weights."""

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: Optional[bool] = hasattr(torch, "_foreach_mul_"),
        kahan_sum: bool = True,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
            r=r, weight_lr_power=weight_lr_power, foreach=foreach,
        )
        self.defaults["kahan_sum"] = kahan_sum
        for group in self.param_groups:
            group.setdefault("kahan_sum", kahan_sum)

    @staticmethod
    def _compensated(group: dict, parameter: torch.Tensor) -> bool:
        return bool(group["kahan_sum"]) and parameter.dtype in LOW_PRECISION

    def _needs_compensation(self) -> bool:
        return any(self._compensated(group, p) for group in self.param_groups for p in group["params"])

    # -- train/eval: move the weights between y (training) and x (the average) --
    @torch.no_grad()
    def train(self) -> None:
        self._switch(training=True)

    @torch.no_grad()
    def eval(self) -> None:
        self._switch(training=False)

    def _switch(self, training: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == training:
                continue
            beta1 = group["betas"][0]
            # y = x + (1 - beta1)(z - x), so x = y + (1 - 1/beta1)(z - y).
            weight = 1 - beta1 if training else 1 - 1 / beta1
            for p in group["params"]:
                state = self.state[p]
                if "z" not in state:
                    continue
                if "y_error" in state:
                    exact = _exact(p, state["y_error"]).lerp_(_exact(state["z"], state["z_error"]), weight)
                    _store(p, exact, state["y_error"])
                else:
                    p.lerp_(end=state["z"].to(p.device), weight=weight)
            group["train_mode"] = training

    # -- step ------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        if not self._needs_compensation():
            return super().step(closure)
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError("the optimizer must be in train mode (call .train()) before step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, ckp1, bias_correction2 = _advance_schedule(group)
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, lr, ckp1, bias_correction2)
            group["k"] += 1
        return loss

    def _update(self, p: torch.Tensor, group: dict, lr: float, ckp1: float, bias_correction2: float) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        compensated = self._compensated(group, p)
        if "z" not in state:
            state["z"] = p.detach().clone(memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if compensated and "y_error" not in state:
            state["y_error"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["z_error"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        y_error, z_error = state.get("y_error"), state.get("z_error")
        grad = p.grad.float()
        second_moment = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg_sq"].copy_(second_moment)
        normalised = grad.div_(second_moment.div_(bias_correction2).sqrt_().add_(group["eps"]))
        y = _exact(p, y_error)
        z = _exact(state["z"], z_error)
        if group["weight_decay"] != 0:
            normalised.add_(y, alpha=group["weight_decay"])  # decay evaluated at y, as the package does
        y.lerp_(z, ckp1).add_(normalised, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z.sub_(normalised, alpha=lr)
        _store(p, y, y_error)
        _store(state["z"], z, z_error)


def _advance_schedule(group: dict) -> tuple[float, float, float]:
    """The package's per-step bookkeeping: warm-up, averaging weight, bias correction."""
    k = group["k"]
    warmup = group["warmup_steps"]
    lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
    group["scheduled_lr"] = lr
    group["lr_max"] = lr_max = max(lr, group["lr_max"])
    weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
    group["weight_sum"] += weight
    ckp1 = weight / group["weight_sum"] if group["weight_sum"] else 0.0
    return lr, ckp1, 1 - group["betas"][1] ** (k + 1)


def _exact(stored: torch.Tensor, error: Optional[torch.Tensor]) -> torch.Tensor:
    """The fp32 value a stored tensor stands for: itself plus its rounding error."""
    value = stored.float().clone() if stored.dtype == torch.float32 else stored.float()
    return value if error is None else value.add_(error.float())


def _store(target: torch.Tensor, exact: torch.Tensor, error: Optional[torch.Tensor]) -> None:
    target.copy_(exact)
    if error is not None:
        error.copy_(exact - target.float())
