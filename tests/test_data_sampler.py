"""BucketBatchSampler: purity, determinism, repeats, ranks, resumption; check_buckets."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.sampler import BucketBatchSampler, check_buckets
from simpletuner.errors import DataError


def _sample(dataset_id, name, bucket) -> TrainingSample:
    width, height = bucket
    record = ImageRecord(path=f"/{dataset_id}/{name}", relative_path=name, width=width, height=height,
                         size_bytes=1, mtime_ns=1, caption=name)
    return TrainingSample(dataset_id=dataset_id, record=record, original_size=(height, width),
                          intermediate_size=(height, width), crop_top_left=(0, 0),
                          target_size=(height, width))


def _dataset(dataset_id, bucket_counts):
    samples = []
    for (bucket, count) in bucket_counts.items():
        samples += [_sample(dataset_id, f"{bucket[0]}x{bucket[1]}_{i:03d}.png", bucket) for i in range(count)]
    return samples


@pytest.fixture
def samples():
    return {
        "a": _dataset("a", {(64, 64): 10, (80, 48): 7, (48, 80): 2}),
        "b": _dataset("b", {(64, 64): 5, (96, 40): 9}),
    }


def _keys(batches):
    return [tuple((s.dataset_id, s.record.relative_path) for s in batch) for batch in batches]


def test_batches_are_bucket_pure_and_full(samples):
    sampler = BucketBatchSampler(samples, batch_size=3, seed=1)
    batches = list(sampler)
    # a: 10//3 + 7//3 + 2//3 = 3 + 2 + 0; b: 5//3 + 9//3 = 1 + 3
    assert len(batches) == sampler.batches_per_epoch() == len(sampler) == 9
    for batch in batches:
        assert len(batch) == 3
        assert len({(s.dataset_id, s.bucket) for s in batch}) == 1
        assert len({s.record.relative_path for s in batch}) == 3  # no repeats -> no duplicates
    datasets = Counter(batch[0].dataset_id for batch in batches)
    assert datasets == {"a": 5, "b": 4}
    assert not any(batch[0].bucket == (48, 80) for batch in batches)  # bucket of 2 never fills


def test_order_is_a_function_of_seed_and_epoch(samples):
    one = BucketBatchSampler(samples, batch_size=3, seed=5)
    two = BucketBatchSampler({k: list(reversed(v)) for k, v in reversed(samples.items())}, batch_size=3, seed=5)
    assert _keys(list(one)) == _keys(list(two))  # input order does not matter
    assert one.epoch == 1
    second_epoch = _keys(list(one))
    assert second_epoch == _keys(two.epoch_batches(1))
    assert second_epoch != _keys(two.epoch_batches(0))  # epochs reshuffle
    other_seed = BucketBatchSampler(samples, batch_size=3, seed=6)
    assert _keys(other_seed.epoch_batches(0)) != _keys(one.epoch_batches(0))


def test_repeats_show_each_sample_one_plus_repeats_times():
    data = {"a": _dataset("a", {(64, 64): 6}), "b": _dataset("b", {(64, 64): 6})}
    sampler = BucketBatchSampler(data, batch_size=2, seed=0, repeats={"a": 2})
    batches = list(sampler)
    assert sampler.batches_per_epoch() == len(batches) == (6 * 3) // 2 + 6 // 2
    seen = Counter(s.record.path for batch in batches for s in batch)
    assert all(seen[s.record.path] == 3 for s in data["a"])
    assert all(seen[s.record.path] == 1 for s in data["b"])


def test_ranks_get_disjoint_equal_shares(samples):
    single = BucketBatchSampler(samples, batch_size=3, seed=2)
    ranks = [BucketBatchSampler(samples, batch_size=3, seed=2, rank=r, world_size=2) for r in range(2)]
    shares = [_keys(list(r)) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == ranks[0].batches_per_epoch() == 9 // 2
    paths = [{p for batch in share for p in batch} for share in shares]
    assert paths[0].isdisjoint(paths[1])
    interleaved = [b for pair in zip(*shares) for b in pair]
    assert interleaved == _keys(single.epoch_batches(0))[: len(interleaved)]


@pytest.mark.parametrize("stop_after", [0, 4, 8, 9, 13])
def test_resume_continues_exactly(samples, stop_after):
    def run(sampler, count):
        out = []
        while len(out) < count:
            for batch in sampler:
                out.append(batch)
                if len(out) == count:
                    break
        return _keys(out)

    reference = run(BucketBatchSampler(samples, batch_size=3, seed=3, repeats={"b": 1}), 30)
    first = BucketBatchSampler(samples, batch_size=3, seed=3, repeats={"b": 1})
    head = run(first, stop_after) if stop_after else []
    state = first.state_dict()
    resumed = BucketBatchSampler(samples, batch_size=3, seed=3, repeats={"b": 1})
    resumed.load_state_dict(state)
    tail = run(resumed, 30 - stop_after)
    assert head + tail == reference


def test_state_after_full_epoch_points_at_next_epoch(samples):
    sampler = BucketBatchSampler(samples, batch_size=3, seed=0)
    for _ in itertools.islice(iter(sampler), 9):
        pass
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["position"] == 0


def test_changed_data_keeps_epoch_on_resume(samples, caplog):
    sampler = BucketBatchSampler(samples, batch_size=3, seed=0)
    iterator = iter(sampler)
    next(iterator), next(iterator)
    state = sampler.state_dict()
    smaller = BucketBatchSampler({"a": samples["a"]}, batch_size=3, seed=0)
    smaller.load_state_dict(state)
    assert smaller.epoch == 0 and smaller.position == 2
    assert "changed since the checkpoint" in caplog.text


def test_check_buckets_reports_counts_and_warnings(samples):
    report = check_buckets(samples, batch_size=3)
    assert report.counts["a"] == {(48, 80): 2, (64, 64): 10, (80, 48): 7}
    assert report.batches == {"a": 5, "b": 4}
    assert report.batches_per_epoch == BucketBatchSampler(samples, batch_size=3).batches_per_epoch()
    assert len(report.warnings) == 1
    assert "dataset 'a'" in report.warnings[0] and "48x80: 2" in report.warnings[0]
    assert "48x80" in report.table() and "9 steps per epoch" in report.table()


def test_check_buckets_warns_about_a_dataset_that_yields_nothing(samples):
    samples["tiny"] = _dataset("tiny", {(64, 64): 1})
    samples["empty"] = []
    warnings = " | ".join(check_buckets(samples, batch_size=3).warnings)
    assert "dataset 'tiny' yields no batch" in warnings
    assert "dataset 'empty' has no usable images" in warnings


def test_check_buckets_raises_when_nothing_fits():
    data = {"a": _dataset("a", {(64, 64): 3, (80, 48): 2}), "b": _dataset("b", {(96, 40): 1})}
    with pytest.raises(DataError) as info:
        check_buckets(data, batch_size=4)
    message = str(info.value)
    assert "dataset 'a'" in message and "64x64: 3" in message and "80x48: 2" in message
    assert "dataset 'b'" in message and "--train_batch_size" in message
    assert "\n" not in message
    assert check_buckets(data, batch_size=4, repeats={"a": 1}).batches["a"] == 2  # 3*2 // 4 + 2*2 // 4


def test_check_buckets_counts_ranks():
    data = {"a": _dataset("a", {(64, 64): 4})}
    assert check_buckets(data, batch_size=2, world_size=2).batches_per_epoch == 1
    with pytest.raises(DataError, match="across 4 processes"):
        check_buckets(data, batch_size=2, world_size=4)


def test_stream_continues_into_the_next_epoch_in_a_new_order() -> None:
    samples = {"d": [_sample("d", f"img{i:02d}.png", (64, 64)) for i in range(8)]}
    sampler = BucketBatchSampler(samples, batch_size=2, seed=3)
    stream = sampler.stream()
    first_epoch = [next(stream) for _ in range(sampler.batches_per_epoch())]
    second_epoch = [next(stream) for _ in range(sampler.batches_per_epoch())]
    paths = lambda batches: [s.record.relative_path for batch in batches for s in batch]
    assert sorted(paths(first_epoch)) == sorted(paths(second_epoch))
    assert paths(first_epoch) != paths(second_epoch)
    assert sampler.state_dict()["epoch"] == 2
