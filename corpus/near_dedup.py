"""Near-duplicate removal over Ray: MinHash band records spilled to disk, pairs per band key range,
connected components on the driver.

Phase 1, one task per chunk (in the clean stage, inside the task that cleans an input file; or a
caller's (keys, texts) chunk): signatures and band keys; per band, the chunk's records sorted by (band key, document key) and saved to
`work_dir/band-BBB/chunk-CCCCCC.{keys,docs}.npy`. Phase 2, one task per band and band-key range: the
range's slice of every chunk file of the band (memory-mapped: only the slice is read), sorted; each
group of equal band keys gives edges (smallest document key, other). Phase 3, on the driver: union-find
over the edges, which only duplicates have; each component keeps its smallest document key.

Memory: a phase-1 task holds one batch of texts and its chunk's band keys (16 bytes x bands per
document); a phase-2 task at most `max_records_in_memory` records (a range with more is halved). The
driver holds only edges and duplicate keys, whose number grows with the duplicates, not the corpus. Determinism: document keys are global (corpus order), a
key group's edges depend only on its members, a component's representative is its smallest key; so the
drop set is the same for any chunking, number of workers or `max_records_in_memory`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.core.logs import get_logger
from lmforge.corpus.config import NearDedupConfig
from lmforge.corpus.minhash import MinHasher, band_keys, clusters, pairs_in_groups, shingle_hashes
from lmforge.corpus.parallel import map_tasks

log = get_logger(__name__)
KEY_SPACE = 1 << 64
TEXTS_PER_BATCH = 1000  # documents shingled at once inside a phase-1 task


@dataclass(frozen=True)
class NearDedupResult:
    drop_keys: np.ndarray  # ascending int64 document keys to drop (all but each cluster's smallest)
    stats: dict[str, Any]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # unique LSH edges


@cache
def _hasher(num_perm: int, seed: int) -> MinHasher:
    return MinHasher(num_perm, seed)


def chunk_band_keys(texts: Sequence[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(band keys of the documents that have shingles: (m, bands), mask of those documents: (n,))."""
    shingles = [shingle_hashes(text, config.shingle_unit, config.shingle_size) for text in texts]
    has_shingles = np.array([len(hashes) > 0 for hashes in shingles], dtype=bool)
    signatures = _hasher(config.num_perm, config.seed).signatures([h for h in shingles if len(h)])
    return band_keys(signatures, config.bands, config.rows), has_shingles


class BandRecordWriter:
    """Phase 1 for one chunk fed in batches: band keys computed per batch, saved per band on close."""

    def __init__(self, chunk_index: int, config: NearDedupConfig, spill_dir: str) -> None:
        self.chunk_index, self.config, self.spill_dir = chunk_index, config, spill_dir
        self._bands: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self.num_documents = 0

    def add(self, keys: Sequence[int] | np.ndarray, texts: Sequence[str]) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) != len(texts) or (len(keys) and keys.min() < 0):
            raise ValueError("a chunk needs one non-negative integer key per text")
        for start in range(0, len(keys), TEXTS_PER_BATCH):
            bands, has_shingles = chunk_band_keys(texts[start : start + TEXTS_PER_BATCH], self.config)
            self._bands.append(bands)
            self._docs.append(keys[start : start + TEXTS_PER_BATCH][has_shingles])
        self.num_documents += len(keys)

    def close(self) -> dict[str, int]:
        num_bands = self.config.bands
        all_bands = np.concatenate(self._bands) if self._bands else np.zeros((0, num_bands), np.uint64)
        docs = np.concatenate(self._docs) if self._docs else np.zeros(0, np.int64)
        for band in range(num_bands):
            order = np.lexsort((docs, all_bands[:, band]))
            stem = Path(self.spill_dir) / f"band-{band:03d}" / f"chunk-{self.chunk_index:06d}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            np.save(f"{stem}.keys.npy", all_bands[order, band])
            np.save(f"{stem}.docs.npy", docs[order])
        return {"num_documents": self.num_documents, "num_without_shingles": self.num_documents - len(docs)}


def write_band_records(
    chunk_index: int,
    batches: Iterable[tuple[np.ndarray, Sequence[str]]],
    config: NearDedupConfig,
    spill_dir: str,
) -> dict[str, int]:
    """Phase 1 for one chunk given as (document keys, texts) batches: band records saved per band."""
    writer = BandRecordWriter(chunk_index, config, spill_dir)
    for keys, texts in batches:
        writer.add(keys, texts)
    return writer.close()


def _position(keys: np.ndarray, bound: int) -> int:
    return len(keys) if bound >= KEY_SPACE else int(np.searchsorted(keys, np.uint64(bound)))


@dataclass(frozen=True)
class KeyFilter:
    """Which document keys take part: keys are (item << 32) | ordinal; an item's ordinals below its
    cap count, less the `excluded` keys (ascending), e.g. exact duplicates dropped before."""

    caps: np.ndarray  # per item: the number of its records inside the document caps
    excluded: np.ndarray  # ascending int64 keys

    def mask(self, docs: np.ndarray) -> np.ndarray:
        items, ordinals = docs >> 32, docs & 0xFFFFFFFF
        keep = ordinals < self.caps[items]
        if len(self.excluded):
            positions = np.minimum(np.searchsorted(self.excluded, docs), len(self.excluded) - 1)
            keep &= self.excluded[positions] != docs
        return keep


def band_range_edges(
    band_dir: str, low: int, high: int, max_records: int, key_filter: KeyFilter | None = None
) -> np.ndarray:
    """Phase 2 for band keys in [low, high): (m, 2) int64 edges; at most `max_records` records held.
    With `key_filter`, documents it leaves out take no part (as if they had not been written)."""
    runs = [
        (np.load(path, mmap_mode="r"), np.load(str(path).replace(".keys.", ".docs."), mmap_mode="r"))
        for path in sorted(Path(band_dir).glob("chunk-*.keys.npy"))
    ]
    return _range_edges(runs, low, high, max_records, key_filter)


def _range_edges(
    runs: list[tuple[np.ndarray, np.ndarray]],
    low: int,
    high: int,
    max_records: int,
    key_filter: KeyFilter | None,
) -> np.ndarray:
    slices = [(_position(keys, low), _position(keys, high)) for keys, _ in runs]
    if sum(end - start for start, end in slices) > max_records and high - low > 1:
        middle = (low + high) // 2
        halves = [
            _range_edges(runs, low, middle, max_records, key_filter),
            _range_edges(runs, middle, high, max_records, key_filter),
        ]
        return np.concatenate(halves)
    keys = np.concatenate([run[start:end] for (run, _), (start, end) in zip(runs, slices, strict=True)])
    docs = np.concatenate([run[start:end] for (_, run), (start, end) in zip(runs, slices, strict=True)])
    if key_filter is not None:
        keep = key_filter.mask(docs)
        keys, docs = keys[keep], docs[keep]
    order = np.lexsort((docs, keys))
    return pairs_in_groups(keys[order], docs[order])


def near_duplicates(
    chunks: Iterable[tuple[Sequence[int] | np.ndarray, Sequence[str]]],
    config: NearDedupConfig,
    work_dir: Path,
    parallel: bool = True,
) -> NearDedupResult:
    """Near-duplicate clusters of documents given as (keys, texts) chunks; keys are unique,
    non-negative and global (the smallest of a cluster is kept). `parallel=False` runs in-process."""
    spill_dir = str(Path(work_dir) / "bands")
    calls = ((index, [chunk], config, spill_dir) for index, chunk in enumerate(chunks))
    chunk_stats = map_tasks(write_band_records, calls, parallel)
    return find_clusters(config, spill_dir, chunk_stats, parallel)


def find_clusters(
    config: NearDedupConfig,
    spill_dir: str,
    chunk_stats: list[dict[str, int]],
    parallel: bool,
    key_filter: KeyFilter | None = None,
    num_documents: int | None = None,
) -> NearDedupResult:
    """Phases 2 and 3 over the band records phase 1 wrote to `spill_dir`. With `key_filter`, pass
    `num_documents`, the number of documents the filter lets through (for the histogram)."""
    num_written = sum(stats["num_documents"] for stats in chunk_stats)
    num_records = num_written - sum(stats["num_without_shingles"] for stats in chunk_stats)
    if num_documents is None:
        num_documents = num_written
    num_ranges = max(1, -(-num_records // config.max_records_in_memory))
    bounds = [KEY_SPACE * index // num_ranges for index in range(num_ranges + 1)]
    calls: list[tuple[Any, ...]] = [
        (
            str(Path(spill_dir) / f"band-{band:03d}"),
            bounds[index],
            bounds[index + 1],
            config.max_records_in_memory,
            key_filter,
        )
        for band in range(config.bands)
        for index in range(num_ranges)
    ]
    log.info("near-dedup: %d documents, %d pair-finding task(s)", num_documents, len(calls))
    if parallel and key_filter is not None and calls:
        import ray

        # Stored once in the object store, not once per task.
        filter_ref = ray.put(key_filter)
        calls = [(*call[:-1], filter_ref) for call in calls]
    edge_parts = map_tasks(band_range_edges, calls, parallel) if num_records else []
    edges = np.unique(np.concatenate(edge_parts), axis=0) if edge_parts else np.zeros((0, 2), np.int64)
    drop_keys, histogram = clusters(edges)
    sizes = {1: num_documents - sum(size * count for size, count in histogram.items()), **histogram}
    stats = {
        "num_documents": num_documents,
        "num_edges": len(edges),
        "num_clusters": sum(histogram.values()),
        "num_dropped": len(drop_keys),
        # Size 1: documents in no cluster (those without shingles included).
        "cluster_size_histogram": {str(size): count for size, count in sizes.items()},
    }
    # Documents too short for one shingle (in no cluster); with a key filter, counted before it.
    stats["num_without_shingles"] = num_written - num_records
    log.info("near-dedup: %d cluster(s), %d document(s) dropped", stats["num_clusters"], len(drop_keys))
    return NearDedupResult(drop_keys, stats, edges)
