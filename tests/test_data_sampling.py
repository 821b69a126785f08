"""Mixing datasets: probability, uniform vs auto-weighting, ignore_epochs, regularisation flag."""

from __future__ import annotations

from collections import Counter

import pytest

from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.sampler import BucketBatchSampler, check_buckets
from simpletuner.data.schedule import SamplingPolicy, quotas
from simpletuner.errors import DataError


def _samples(dataset_id, count, bucket=(64, 64), regularisation=False):
    out = []
    for i in range(count):
        record = ImageRecord(path=f"/{dataset_id}/{i}.png", relative_path=f"{i:04d}.png", width=bucket[0],
                             height=bucket[1], size_bytes=1, mtime_ns=1, caption="c")
        out.append(TrainingSample(dataset_id, record, (bucket[1], bucket[0]), (bucket[1], bucket[0]), (0, 0),
                                  (bucket[1], bucket[0]), is_regularisation=regularisation))
    return out


@pytest.fixture
def data():
    return {"big": _samples("big", 40), "small": _samples("small", 10)}


def _datasets(batches):
    return [batch[0].dataset_id for batch in batches]


def test_auto_weighting_mixes_in_proportion(data):
    sampler = BucketBatchSampler(data, batch_size=2, seed=0)
    order = _datasets(list(sampler))
    assert Counter(order) == {"big": 20, "small": 5}
    # Proportional all along: the small dataset is spread over the epoch, not bunched at one end.
    assert Counter(order[:12])["small"] in (1, 2, 3, 4)
    assert Counter(order[13:])["small"] in (1, 2, 3, 4)


def test_uniform_alternates_until_the_small_dataset_runs_out(data):
    policy = SamplingPolicy(mode="uniform")
    sampler = BucketBatchSampler(data, batch_size=2, seed=0, policy=policy)
    order = _datasets(list(sampler))
    assert Counter(order) == {"big": 20, "small": 5}  # an epoch is still every batch once
    assert Counter(order[:10])["small"] >= 4  # picked about as often as big while it lasts
    assert set(order[12:]) == {"big"}


def test_probability_weights_and_zero(data):
    heavy = SamplingPolicy(mode="uniform", probability={"small": 4.0})
    first = _datasets(BucketBatchSampler(data, 2, seed=1, policy=heavy).epoch_batches(0))[:6]
    assert Counter(first)["small"] >= 4
    off = SamplingPolicy(probability={"small": 0.0})
    sampler = BucketBatchSampler(data, 2, seed=1, policy=off)
    assert set(_datasets(list(sampler))) == {"big"} and sampler.batches_per_epoch() == 20
    report = check_buckets(data, 2, policy=off)
    assert report.batches_per_epoch == 20 and any("probability 0" in w for w in report.warnings)
    with pytest.raises(DataError, match="non-zero probability"):
        check_buckets(data, 2, policy=SamplingPolicy(probability={"big": 0, "small": 0}))


def test_ignore_epochs_dataset_streams_across_epochs():
    data = {"main": _samples("main", 8), "reg": _samples("reg", 30)}
    policy = SamplingPolicy(mode="uniform", ignore_epochs=frozenset({"reg"}))
    assert quotas({"main": 4, "reg": 15}, policy) == {"main": 4, "reg": 4}
    sampler = BucketBatchSampler(data, batch_size=2, seed=3, policy=policy)
    assert sampler.batches_per_epoch() == 8 == check_buckets(data, 2, policy=policy).batches_per_epoch
    seen = []
    for epoch in range(4):
        batches = sampler.epoch_batches(epoch)
        assert Counter(_datasets(batches)) == {"main": 4, "reg": 4}
        seen += [s.record.relative_path for b in batches if b[0].dataset_id == "reg" for s in b]
    # 4 epochs x 4 batches x 2 = 32 reg images drawn: the first pass (30) completes before any repeats.
    assert len(set(seen[:30])) == 30


def test_regularisation_flag_rides_on_samples():
    data = {"main": _samples("main", 4), "reg": _samples("reg", 4, regularisation=True)}
    for batch in BucketBatchSampler(data, batch_size=2, seed=0).epoch_batches(0):
        assert all(s.is_regularisation == (s.dataset_id == "reg") for s in batch)


def test_policy_orders_are_deterministic_resumable_and_rank_disjoint():
    data = {"a": _samples("a", 12), "b": _samples("b", 30, bucket=(80, 48)), "c": _samples("c", 9)}
    policy = SamplingPolicy(mode="uniform", probability={"a": 2.0}, ignore_epochs=frozenset({"c"}))
    one = BucketBatchSampler(data, 3, seed=5, policy=policy)
    two = BucketBatchSampler(data, 3, seed=5, policy=policy)
    assert [tuple(id(s) for s in b) for b in one.epoch_batches(2)] == \
        [tuple(id(s) for s in b) for b in two.epoch_batches(2)]
    keys = lambda batches: [tuple((s.dataset_id, s.record.relative_path) for s in b) for b in batches]
    reference = keys(one.epoch_batches(0) + one.epoch_batches(1))
    stopped = BucketBatchSampler(data, 3, seed=5, policy=policy)
    iterator = iter(stopped)
    head = [next(iterator) for _ in range(5)]
    resumed = BucketBatchSampler(data, 3, seed=5, policy=policy)
    resumed.load_state_dict(stopped.state_dict())
    tail = list(resumed) + list(resumed)
    assert keys(head + tail) == reference
    ranks = [BucketBatchSampler(data, 3, seed=5, policy=policy, rank=r, world_size=2) for r in range(2)]
    shares = [keys(r.epoch_batches(0)) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == one.batches_per_epoch() // 2
    assert not set(shares[0]) & set(shares[1])


def test_policy_changes_the_resume_fingerprint(data):
    sampler = BucketBatchSampler(data, 2, seed=0)
    other = BucketBatchSampler(data, 2, seed=0, policy=SamplingPolicy(mode="uniform"))
    assert sampler.state_dict()["fingerprint"] != other.state_dict()["fingerprint"]


def test_report_table_shows_the_mix(data):
    policy = SamplingPolicy(mode="uniform", probability={"small": 0.5}, ignore_epochs=frozenset({"small"}))
    report = check_buckets(data, 2, policy=policy)
    table = report.table()
    assert "probability 0.5" in table and "ignore_epochs" in table and "sampling uniform" in table
    assert f"{report.batches_per_epoch} steps per epoch" in table
    assert report.batches_per_epoch == BucketBatchSampler(data, 2, policy=policy).batches_per_epoch()


def test_pipeline_carries_the_policy_to_the_sampler(tmp_path):
    from PIL import Image

    from simpletuner.data.pipeline import prepare_training_data
    from simpletuner.data.schema import parse_data_backend_config

    for name, count in (("one", 6), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(count):
            Image.new("RGB", (32, 32)).save(folder / f"{name}_{i}.png")
    backends = parse_data_backend_config(
        [{"id": "one", "instance_data_dir": str(tmp_path / "one"), "cache_dir_vae": str(tmp_path / "v1"),
          "resolution": 32, "aspect_bucket_alignment": 16, "probability": 3, "is_regularization_data": True},
         {"id": "two", "instance_data_dir": str(tmp_path / "two"), "cache_dir_vae": str(tmp_path / "v2"),
          "resolution": 32, "aspect_bucket_alignment": 16, "ignore_epochs": True},
         {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}], {})

    class Config:
        train_batch_size = 1
        data_backend_sampling = "uniform"

    data = prepare_training_data(Config, backends, show_progress=False)
    assert data.policy == SamplingPolicy("uniform", {"one": 3.0, "two": 1.0}, frozenset({"two"}))
    assert data.report.quota == {"one": 6, "two": 2}  # T = 6/3 = 2 -> two gets 2 x 1
    # The trainer builds the sampler from data.samples: the policy travels with it.
    plain = BucketBatchSampler(data.samples, 1, seed=0, repeats=data.report.repeats)
    assert plain.batches_per_epoch() == data.report.batches_per_epoch == 8
    assert all(s.is_regularisation for s in data.samples["one"])
