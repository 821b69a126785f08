"""How datasets share an epoch: weights, quotas and the interleaved order.

Every epoch each dataset contributes a whole number of batches, its
*quota*, fixed for the run so that steps per epoch, the figure the summary
prints and the trainer's step count all agree with what the sampler yields:

* A dataset's own batches per pass are its buckets' complete batches, each
  image counted 1 + ``repeats`` times.
* Its weight is ``probability`` × (own batches) with
  ``--data_backend_sampling auto-weighting`` (every dataset is seen in
  proportion to its size), or ``probability`` alone with ``uniform``.
  ``probability: 0`` leaves a dataset out of sampling.
* Datasets that count towards the epoch (the default) contribute all their
  own batches.  An ``ignore_epochs`` dataset contributes what its weight
  earns while the counted ones last: with T = max(own / weight) over counted
  datasets, its quota is round(T × weight).  It draws from an endless stream
  of its own passes, so the next epoch continues where this one stopped.
* The order interleaves datasets by weight: dataset d's k-th batch of the
  epoch sits at virtual time (k + u) / weight_d with u uniform in [0, 1) from
  the seeded generator, and batches are taken in time order.  With uniform
  sampling a small dataset therefore runs out early in the epoch and the
  rest of the epoch comes from the others, as with SimpleTuner; with
  auto-weighting all datasets run out together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping

SAMPLING_MODES = ("auto-weighting", "uniform")


@dataclass(frozen=True)
class SamplingPolicy:
    """How datasets are mixed: ``--data_backend_sampling``, probabilities, ignore_epochs."""

    mode: str = "auto-weighting"
    probability: Mapping[str, float] = field(default_factory=dict)  # dataset id -> probability (default 1)
    ignore_epochs: FrozenSet[str] = frozenset()
    # --disable_bucket_pruning sets it False: a bucket's incomplete last batch is filled up with
    # repeats of its own images (see data/report.py) instead of being left out.
    prune: bool = True

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"data_backend_sampling {self.mode!r} is not one of {', '.join(SAMPLING_MODES)}")

    def describe(self) -> tuple:
        """A stable, hashable description (for the sampler's resume fingerprint)."""
        return (self.mode, tuple(sorted(self.probability.items())), tuple(sorted(self.ignore_epochs)), self.prune)


def weights(own_batches: Mapping[str, int], policy: SamplingPolicy) -> Dict[str, float]:
    """Each dataset's sampling weight (0 for datasets with nothing to give or probability 0)."""
    result = {}
    for dataset_id, count in own_batches.items():
        probability = float(policy.probability.get(dataset_id, 1.0))
        if count <= 0 or probability <= 0:
            result[dataset_id] = 0.0
        elif policy.mode == "uniform":
            result[dataset_id] = probability
        else:
            result[dataset_id] = probability * count
    return result


def quotas(own_batches: Mapping[str, int], policy: SamplingPolicy) -> Dict[str, int]:
    """Batches each dataset contributes to every epoch (all ranks together)."""
    weight = weights(own_batches, policy)
    active = [d for d, w in weight.items() if w > 0]
    counted = [d for d in active if d not in policy.ignore_epochs] or active  # all ignored: all count
    result = {d: 0 for d in own_batches}
    if not counted:
        return result
    horizon = max(own_batches[d] / weight[d] for d in counted)
    for dataset_id in active:
        if dataset_id in counted:
            result[dataset_id] = own_batches[dataset_id]
        else:
            result[dataset_id] = int(math.floor(horizon * weight[dataset_id] + 0.5))
    return result
