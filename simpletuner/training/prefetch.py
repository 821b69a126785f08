"""--dataloader_prefetch: the next batches' cache entries read by a background thread.

Without it, every step first reads its samples' latents and text embeds from
the caches (disk or S3) and only then computes.  With it, a worker thread
takes batches from the sampler in order, reads their entries and keeps up to
``--dataloader_prefetch_qlen`` of them ready, so the reading of the next
batches overlaps the current step.

What trains does not change: the worker draws no random numbers (caption
dropout and noise stay in the loop, on the trainer's generator), the loop
takes batches in the sampler's order, and the entries are the same tensors.
The sampler runs up to ``qlen`` batches ahead, so a checkpoint saves the
position of the last batch the loop *took* (:meth:`PrefetchingSampler.state_dict`),
and a resumed run continues at the same sample.

A read that fails (a deleted cache file) is raised in the loop when it
reaches that batch, with the same error as without prefetch.  The worker is
stopped by :func:`stop_prefetch` however the loop ends (last step, error,
signal), and is a daemon thread, so it can never keep the process alive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

WORKER_NAME = "simpletuner-prefetch"
_POLL_S = 0.1  # how often a blocked worker or loop looks whether it should stop
_JOIN_S = 30.0  # longest wait for a worker still inside a read when the loop ends
# Slow storage (S3, network disks) is slow per request, not per byte, so one reader at a time could
# not keep ahead of a fast step: once a batch's reads average over _SLOW_READ_S per entry, its entries
# are read concurrently.  Fast reads stay on the worker thread, where more threads would only compete
# with the step for the GIL.
_READERS = 8
_SLOW_READ_S = 0.002


@dataclass
class PreparedBatch:
    """One batch as the worker hands it over: its samples and their cache entries."""

    samples: list
    epoch: int  # the sampler's epoch of this batch
    state: dict  # the sampler's state right after it (what a checkpoint at this batch saves)
    latents: dict = field(default_factory=dict)  # sample -> latent tensor
    texts: dict = field(default_factory=dict)  # sample -> text-embed entry
    empty_texts: dict = field(default_factory=dict)  # dataset id -> the empty prompt's entry
    error: Optional[BaseException] = None  # a read that failed; raised when the loop takes the batch


class StagedLookup:
    """The cache lookup, answering from the batch the loop is training when the worker read it."""

    def __init__(self, lookup: Any) -> None:
        self.lookup = lookup
        self.current: Optional[PreparedBatch] = None

    def latents(self, sample: Any) -> Any:
        staged = self.current.latents.get(sample) if self.current else None
        return staged if staged is not None else self.lookup.latents(sample)

    def text(self, sample: Any) -> dict:
        staged = self.current.texts.get(sample) if self.current else None
        return staged if staged is not None else self.lookup.text(sample)

    def empty_text(self, dataset_id: str) -> dict:
        staged = self.current.empty_texts.get(dataset_id) if self.current else None
        return staged if staged is not None else self.lookup.empty_text(dataset_id)

    def __getattr__(self, name: str) -> Any:  # stores, identities, for_epoch: the lookup's own
        return getattr(self.lookup, name)


class _Worker(threading.Thread):
    """Reads batches ahead into a bounded queue until told to stop."""

    def __init__(self, sampler: Any, lookup: Any, qlen: int, texts: bool, empty_texts: bool) -> None:
        super().__init__(name=WORKER_NAME, daemon=True)
        self.sampler, self.lookup = sampler, lookup
        self.texts, self.empty_texts = texts, empty_texts
        self.ready: "queue.Queue[PreparedBatch]" = queue.Queue(maxsize=qlen)
        self.stopping = threading.Event()
        self.batches = sampler.stream()
        self.readers = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix=WORKER_NAME)
        self.slow_reads = False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                samples = next(self.batches)
            except BaseException as error:  # no batch can be formed: the loop raises it
                self._hand_over(PreparedBatch([], self.sampler.epoch, self.sampler.state_dict(), error=error))
                return
            batch = PreparedBatch(samples, self.sampler.epoch, self.sampler.state_dict())
            try:
                self._read(batch)
            except BaseException as error:
                batch.error = error
            self._hand_over(batch)
            if batch.error is not None:
                return

    def _read(self, batch: PreparedBatch) -> None:
        samples = list(dict.fromkeys(batch.samples))  # a sample repeated in a batch is read once
        # Both ways hand results back in order and raise the first failed read in order, as the loop would.
        read_all = (lambda read: list(self.readers.map(read, samples))) if self.slow_reads else (
            lambda read: [read(sample) for sample in samples])
        started = time.perf_counter()
        batch.latents.update(zip(samples, read_all(self.lookup.latents)))
        if self.texts:
            batch.texts.update(zip(samples, read_all(self.lookup.text)))
        entries = len(samples) * (2 if self.texts else 1)
        self.slow_reads = self.slow_reads or (time.perf_counter() - started) / max(entries, 1) > _SLOW_READ_S
        if self.empty_texts:
            for dataset_id in dict.fromkeys(sample.dataset_id for sample in samples):
                batch.empty_texts[dataset_id] = self.lookup.empty_text(dataset_id)

    def _hand_over(self, batch: PreparedBatch) -> None:
        while not self.stopping.is_set():
            try:
                self.ready.put(batch, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def take(self) -> PreparedBatch:
        while True:
            try:
                return self.ready.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.is_alive() and self.ready.empty():
                    raise RuntimeError("the dataloader prefetch worker ended without handing over a batch")

    def stop(self) -> None:
        self.stopping.set()
        while True:  # free a worker blocked on a full queue
            try:
                self.ready.get_nowait()
            except queue.Empty:
                break
        self.join(timeout=_JOIN_S)
        if self.is_alive():
            logger.warning("the dataloader prefetch worker is still inside a read after %.0f s; leaving it "
                           "(a daemon thread, it ends with the process)", _JOIN_S)
            self.readers.shutdown(wait=False, cancel_futures=True)
        else:
            self.readers.shutdown(wait=True)  # idle once the worker has ended
            self.batches.close()


class PrefetchingSampler:
    """The sampler's interface (stream, epoch, state_dict, load_state_dict), read ahead by a worker."""

    def __init__(self, sampler: Any, lookup: StagedLookup, qlen: int, texts: bool, empty_texts: bool) -> None:
        self.sampler = sampler
        self.lookup = lookup
        self.qlen, self.texts, self.empty_texts = qlen, texts, empty_texts
        self._state: Optional[dict] = None  # the sampler state after the batch last taken
        self._epoch: Optional[int] = None
        self._worker: Optional[_Worker] = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch if self._epoch is None else self._epoch

    def state_dict(self) -> dict:
        return self.sampler.state_dict() if self._state is None else dict(self._state)

    def load_state_dict(self, state: Any) -> None:
        if self._worker is not None:
            raise RuntimeError("the sampler's position cannot change while the prefetch worker reads ahead")
        self.sampler.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def stream(self) -> Iterator[list]:
        self._worker = _Worker(self.sampler, self.lookup.lookup, self.qlen, self.texts, self.empty_texts)
        self._worker.start()
        while True:
            batch = self._worker.take()
            if batch.error is not None:
                raise batch.error
            self._state, self._epoch = batch.state, batch.epoch
            self.lookup.current = batch
            yield batch.samples

    def close(self) -> None:
        """Stop the worker (idempotent); the loop has taken its last batch."""
        worker, self._worker = self._worker, None
        self.lookup.current = None
        if worker is not None:
            worker.stop()


def prefetched(sampler: Any, lookup: Any, config: Any) -> tuple[Any, Any]:
    """The (sampler, lookup) pair the loop uses: with --dataloader_prefetch, the read-ahead pair."""
    if not getattr(config, "dataloader_prefetch", False):
        return sampler, lookup
    if lookup.epoch_crops is not None:
        datasets = ", ".join(f"'{d}'" for d in lookup.epoch_crops.samples)
        raise ConfigError(
            f"--dataloader_prefetch reads batches ahead, but dataset {datasets} re-encodes its latents at each "
            "epoch (vae_cache_clear_each_epoch); turn one of the two off"
        )
    staged = StagedLookup(lookup)
    texts = not getattr(config, "train_text_encoder", False)  # trained encoders encode captions in the step
    empty = texts and getattr(config, "caption_dropout_probability", 0) > 0
    qlen = getattr(config, "dataloader_prefetch_qlen", 10)
    logger.info("dataloader prefetch: keeping up to %d batches ready", qlen)
    return PrefetchingSampler(sampler, staged, qlen, texts, empty), staged


def stop_prefetch(sampler: Any) -> None:
    """Stop a prefetch worker, if the run has one; called however the loop ended."""
    if isinstance(sampler, PrefetchingSampler):
        sampler.close()
