"""The noise and schedule positions each held-out image is evaluated at, fixed by the seed.

Every image is noised once in each quarter of the schedule (:data:`RANGES`):
position ``(r + u) / 4`` for range ``r``, with ``u`` in [0, 1).  The noise and
the ``u`` come from a generator of the image's own, seeded from the run's seed
and the image's place in the evaluation list (numpy's ``SeedSequence`` mixes
the two), so they are the same at every evaluation of a run, in every run
with that seed, on whichever process evaluates the image, and drawing them
consumes nothing from the trainer's generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RANGES = 4  # quarters of the schedule, each logged as eval/loss_tLLL-HHH
_STREAM = 0x45564C  # keeps these draws apart from any other use of (seed, index)


@dataclass(frozen=True)
class FixedDraw:
    noise: torch.Tensor  # (RANGES, *latent shape), float32
    positions: torch.Tensor  # (RANGES,) float64 in [0, 1): range r holds [r / RANGES, (r + 1) / RANGES)


def fixed_draw(seed: int, index: int, latent_shape: tuple[int, ...]) -> FixedDraw:
    """The draw of the ``index``-th evaluated image of a run seeded with ``seed``."""
    state = np.random.SeedSequence([int(seed), _STREAM, int(index)]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    noise = torch.randn((RANGES, *latent_shape), generator=generator)
    offsets = torch.rand(RANGES, generator=generator, dtype=torch.float64)
    positions = (torch.arange(RANGES, dtype=torch.float64) + offsets) / RANGES
    return FixedDraw(noise=noise, positions=positions)


def range_names(num_train_timesteps: int) -> list[str]:
    """``t000-249`` ... ``t750-999`` for 1,000 timesteps: each range's first and last timestep.

    Flow-matching families are named on the same scale (timestep = sigma x 1,000).
    """
    names = []
    for r in range(RANGES):
        low = r * num_train_timesteps // RANGES
        high = (r + 1) * num_train_timesteps // RANGES - 1
        names.append(f"t{low:03d}-{high:03d}")
    return names
