"""Shard reading and the per-rank striding of train and validation sequences."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.training.data import TrainStream, eval_batches, load_split, read_manifest

pytestmark = pytest.mark.unit

SEQ_LEN = 16


def write_shards(directory, counts: dict[str, list[int]]):
    """Shards whose first token is the global sequence number within its split, for tracing."""
    shards = []
    for split, sizes in counts.items():
        start = 0
        for index, size in enumerate(sizes):
            rows = np.arange(start, start + size)[:, None] * np.ones(SEQ_LEN, dtype=np.int64)
            path = f"{split}-{index:05d}.parquet"
            column = pa.array(rows.tolist(), type=pa.list_(pa.int32()))
            pq.write_table(pa.table({"input_ids": column}), directory / path)
            shards.append({"path": path, "split": split, "num_sequences": size})
            start += size
    manifest = {"packing": "clm", "seq_len": SEQ_LEN, "shards": shards}
    (directory / "dataset_manifest.json").write_text(json.dumps(manifest))


def test_load_split_concatenates_shards_in_order(tmp_path):
    write_shards(tmp_path, {"train": [5, 7], "validation": [3]})
    train = load_split(tmp_path, "train")
    assert train.shape == (12, SEQ_LEN) and str(train.dtype) == "torch.int32"
    assert train[:, 0].tolist() == list(range(12))
    assert load_split(tmp_path, "validation").shape == (3, SEQ_LEN)
    with pytest.raises(ConfigError, match="test"):
        load_split(tmp_path, "test")


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="dataset_manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "dataset_manifest.json").write_text(json.dumps({"packing": "clm", "shards": []}))
    with pytest.raises(ArtifactError, match="seq_len"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("num_sequences", [96, 101])
def test_train_ranks_disjoint_and_cover_split(num_sequences):
    world, micro = 3, 4
    streams = [TrainStream(num_sequences, rank, world, micro, seed=5) for rank in range(world)]
    for epoch in range(2):
        per_rank = [
            np.concatenate([s.batch(epoch * s.batches_per_epoch + i)[1] for i in range(s.batches_per_epoch)])
            for s in streams
        ]
        seen = np.concatenate(per_rank)
        assert len(set(seen.tolist())) == len(seen), "ranks overlap"
        # Each rank takes num_sequences // world sequences, whole micro-batches: at most
        # world - 1 + world * (micro - 1) sequences sit an epoch out.
        assert len(seen) == world * (num_sequences // world // micro) * micro
        assert {len(p) for p in per_rank} == {len(per_rank[0])}
    if num_sequences == 96:  # divides evenly: every sequence is trained every epoch
        assert sorted(seen.tolist()) == list(range(96))


def test_epochs_reshuffle_deterministically():
    first = TrainStream(64, 0, 2, 4, seed=1)
    again = TrainStream(64, 0, 2, 4, seed=1)
    assert np.array_equal(first.epoch_indices(0), again.epoch_indices(0))
    assert not np.array_equal(first.epoch_indices(0), first.epoch_indices(1))
    assert first.batch(first.batches_per_epoch)[0] == 1
    with pytest.raises(DataError, match="fewer than"):
        TrainStream(7, 0, 2, 4, seed=1)


@pytest.mark.parametrize(("num_sequences", "max_batches"), [(23, None), (24, None), (23, 2)])
def test_eval_batches_cover_validation_once_with_equal_batch_counts(num_sequences, max_batches):
    world, micro = 2, 4
    batches = [eval_batches(num_sequences, rank, world, micro, max_batches) for rank in range(world)]
    assert len({len(b) for b in batches}) == 1, "ranks must run the same number of forwards"
    real = np.concatenate([batch[batch >= 0] for rank_batches in batches for batch in rank_batches])
    assert len(set(real.tolist())) == len(real)
    if max_batches is None:
        assert sorted(real.tolist()) == list(range(num_sequences))
    else:
        assert len(real) == world * max_batches * micro
