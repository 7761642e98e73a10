"""Read packed token shards (dataset_manifest.json + Parquet) and stride them over data-parallel ranks."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.core.errors import ArtifactError, DataError

MANIFEST = "dataset_manifest.json"


def read_manifest(shards_dir: Path) -> dict:
    """The shard manifest (tokenization's format), checked for the keys training relies on."""
    from lmforge.tokenization.shard import read_dataset_manifest

    manifest = read_dataset_manifest(shards_dir)
    path = Path(shards_dir) / MANIFEST
    for key, kind in (("packing", str), ("seq_len", int), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{path}: key {key!r} missing or not a {kind.__name__}")
    for index, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not {"path", "split"} <= shard.keys():
            raise ArtifactError(f"{path}: shards[{index}] needs 'path' and 'split'")
    return manifest


def load_split(shards_dir: Path, split: str) -> torch.Tensor:
    """All sequences of `split` in manifest order, as an int32 tensor (num_sequences, seq_len)."""
    from lmforge.tokenization.shard import load_split as load_split_array

    read_manifest(shards_dir)
    sequences = load_split_array(shards_dir, split)
    if len(sequences) == 0:
        raise DataError(f"{Path(shards_dir) / MANIFEST}: no shard with split {split!r}")
    return torch.from_numpy(sequences)


@dataclass(frozen=True)
class TrainStream:
    """Micro-batches for one rank: reshuffled each epoch, ranks strided over disjoint sequences.

    Random access by micro-batch index (`batch(index)`) makes resuming at a step exact. Each epoch
    every rank takes the same number of sequences (the shuffle decides which at most
    `world_size - 1` sequences sit the epoch out) and drops its last partial micro-batch, so all
    ranks run the same number of steps per epoch.
    """

    num_sequences: int
    rank: int
    world_size: int
    micro_batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise DataError(
                f"train split has {self.num_sequences} sequences, fewer than num_workers x micro_batch_size "
                f"= {self.world_size} x {self.micro_batch_size}"
            )

    @property
    def sequences_per_rank(self) -> int:
        return self.num_sequences // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.sequences_per_rank // self.micro_batch_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sequence indices for `epoch`, in the order they are trained."""
        order = _epoch_order(self.num_sequences, self.seed, epoch)
        return order[self.rank :: self.world_size][: self.sequences_per_rank]

    def batch(self, index: int) -> tuple[int, np.ndarray]:
        """(epoch, sequence indices) of this rank's micro-batch number `index` (0-based, across epochs)."""
        epoch, within = divmod(index, self.batches_per_epoch)
        start = within * self.micro_batch_size
        return epoch, self.epoch_indices(epoch)[start : start + self.micro_batch_size].copy()


@functools.lru_cache(maxsize=2)
def _epoch_order(num_sequences: int, seed: int, epoch: int) -> np.ndarray:
    # Cached: every micro-batch of an epoch needs the same permutation.
    order = np.random.default_rng([seed, epoch]).permutation(num_sequences)
    order.flags.writeable = False
    return order


def eval_batches(
    num_sequences: int, rank: int, world_size: int, micro_batch_size: int, max_batches: int | None
) -> list[np.ndarray]:
    """This rank's validation micro-batches, in order; padding slots are -1.

    Every rank gets the same number of batches (ZeRO-3 forwards are collective), so ranks with
    fewer sequences pad with -1 entries that the caller must give no weight.
    """
    per_rank = math.ceil(num_sequences / world_size)
    num_batches = math.ceil(per_rank / micro_batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    mine = np.arange(rank, num_sequences, world_size)
    padded = np.full(num_batches * micro_batch_size, -1, dtype=np.int64)
    take = min(len(mine), len(padded))
    padded[:take] = mine[:take]
    return [padded[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(num_batches)]
