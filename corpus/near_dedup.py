"""Near-duplicate removal over Ray: MinHash band records spilled to disk, pairs per band key range,
connected components on the driver.

Phase 1, one task per chunk (a Parquet part of the clean stage, or a caller's (keys, texts) chunk):
signatures and band keys; per band, the chunk's records sorted by (band key, document key) and saved to
`work_dir/band-BBB/chunk-CCCCCC.{keys,docs}.npy`. Phase 2, one task per band and band-key range: the
range's slice of every chunk file of the band (memory-mapped: only the slice is read), sorted; each
group of equal band keys gives edges (smallest document key, other). Phase 3, on the driver: union-find
over the edges, which only duplicates have; each component keeps its smallest document key.

Memory: a phase-1 task holds one batch of texts and its chunk's band keys (16 bytes x bands per
document); a phase-2 task at most `max_records_in_memory` records (a range with more is halved). The
driver holds only edges and duplicate keys. Determinism: document keys are global (corpus order), a
key group's edges depend only on its members, a component's representative is its smallest key; so the
drop set is the same for any chunking, number of workers or `max_records_in_memory`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from lmforge.core.logs import get_logger
from lmforge.corpus.config import NearDedupConfig
from lmforge.corpus.minhash import MinHasher, band_keys, clusters, pairs_in_groups, shingle_hashes

log = get_logger(__name__)
KEY_SPACE = 1 << 64
TEXTS_PER_BATCH = 1000  # documents shingled at once inside a phase-1 task


@dataclass(frozen=True)
class NearDedupResult:
    drop_keys: np.ndarray  # ascending int64 document keys to drop (all but each cluster's smallest)
    stats: dict[str, Any]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # unique LSH edges
    drop_doc_ids: tuple[str, ...] = ()  # near_duplicates_in_parts: the doc_id of each drop key


@cache
def _hasher(num_perm: int, seed: int) -> MinHasher:
    return MinHasher(num_perm, seed)


def chunk_band_keys(texts: Sequence[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(band keys of the documents that have shingles: (m, bands), mask of those documents: (n,))."""
    shingles = [shingle_hashes(text, config.shingle_unit, config.shingle_size) for text in texts]
    has_shingles = np.array([len(hashes) > 0 for hashes in shingles], dtype=bool)
    signatures = _hasher(config.num_perm, config.seed).signatures([h for h in shingles if len(h)])
    return band_keys(signatures, config.bands, config.rows), has_shingles


def write_band_records(
    chunk_index: int,
    batches: Iterable[tuple[np.ndarray, Sequence[str]]],
    config: NearDedupConfig,
    spill_dir: str,
) -> dict[str, int]:
    """Phase 1 for one chunk given as (document keys, texts) batches: band records saved per band."""
    key_parts, doc_parts, num_documents = [], [], 0
    for keys, texts in batches:
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) != len(texts) or (len(keys) and keys.min() < 0):
            raise ValueError("a chunk needs one non-negative integer key per text")
        for start in range(0, len(keys), TEXTS_PER_BATCH):
            bands, has_shingles = chunk_band_keys(texts[start : start + TEXTS_PER_BATCH], config)
            key_parts.append(bands)
            doc_parts.append(keys[start : start + TEXTS_PER_BATCH][has_shingles])
        num_documents += len(keys)
    all_bands = np.concatenate(key_parts) if key_parts else np.zeros((0, config.bands), np.uint64)
    docs = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int64)
    for band in range(config.bands):
        order = np.lexsort((docs, all_bands[:, band]))
        stem = Path(spill_dir) / f"band-{band:03d}" / f"chunk-{chunk_index:06d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{stem}.keys.npy", all_bands[order, band])
        np.save(f"{stem}.docs.npy", docs[order])
    return {"num_documents": num_documents, "num_without_shingles": num_documents - len(docs)}


def write_part_band_records(
    chunk_index: int, part_path: str, first_key: int, config: NearDedupConfig, spill_dir: str
) -> dict[str, int]:
    """Phase 1 for one clean-stage Parquet part; its rows are keys first_key, first_key + 1, ..."""

    def batches() -> Iterable[tuple[np.ndarray, list[str]]]:
        offset = first_key
        for batch in pq.ParquetFile(part_path).iter_batches(batch_size=TEXTS_PER_BATCH, columns=["text"]):
            texts = batch.column(0).to_pylist()
            yield np.arange(offset, offset + len(texts), dtype=np.int64), texts
            offset += len(texts)

    return write_band_records(chunk_index, batches(), config, spill_dir)


def _position(keys: np.ndarray, bound: int) -> int:
    return len(keys) if bound >= KEY_SPACE else int(np.searchsorted(keys, np.uint64(bound)))


def band_range_edges(band_dir: str, low: int, high: int, max_records: int) -> np.ndarray:
    """Phase 2 for band keys in [low, high): (m, 2) int64 edges; at most `max_records` records held."""
    runs = [
        (np.load(path, mmap_mode="r"), np.load(str(path).replace(".keys.", ".docs."), mmap_mode="r"))
        for path in sorted(Path(band_dir).glob("chunk-*.keys.npy"))
    ]
    return _range_edges(runs, low, high, max_records)


def _range_edges(
    runs: list[tuple[np.ndarray, np.ndarray]], low: int, high: int, max_records: int
) -> np.ndarray:
    slices = [(_position(keys, low), _position(keys, high)) for keys, _ in runs]
    if sum(end - start for start, end in slices) > max_records and high - low > 1:
        middle = (low + high) // 2
        halves = [_range_edges(runs, low, middle, max_records), _range_edges(runs, middle, high, max_records)]
        return np.concatenate(halves)
    keys = np.concatenate([run[start:end] for (run, _), (start, end) in zip(runs, slices, strict=True)])
    docs = np.concatenate([run[start:end] for (_, run), (start, end) in zip(runs, slices, strict=True)])
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
    chunk_stats = _map(write_band_records, calls, parallel)
    return _find_clusters(config, spill_dir, chunk_stats, parallel)


def near_duplicates_in_parts(
    parts_dir: Path, config: NearDedupConfig, work_dir: Path, parallel: bool = True
) -> NearDedupResult:
    """Near duplicates in the clean stage's `part-NNNNN.parquet` files (doc_id, source, text).

    A document's key is its position in the corpus (parts in name order), so the first occurrence is
    the one kept, as in exact dedup. The result names the documents to drop by doc_id too.
    """
    parts = sorted(Path(parts_dir).glob("part-*.parquet"))
    num_rows = [pq.ParquetFile(path).metadata.num_rows for path in parts]
    offsets = np.r_[0, np.cumsum(num_rows)].astype(int).tolist()
    spill_dir = str(Path(work_dir) / "bands")
    calls = [(index, str(path), offsets[index], config, spill_dir) for index, path in enumerate(parts)]
    chunk_stats = _map(write_part_band_records, calls, parallel)
    result = _find_clusters(config, spill_dir, chunk_stats, parallel)
    doc_ids: list[str] = []
    for index, path in enumerate(parts):
        rows = result.drop_keys[
            (result.drop_keys >= offsets[index]) & (result.drop_keys < offsets[index + 1])
        ]
        if len(rows):
            column = pq.read_table(path, columns=["doc_id"]).column("doc_id")
            doc_ids.extend(column.take(rows - offsets[index]).to_pylist())
    return NearDedupResult(result.drop_keys, result.stats, result.edges, tuple(doc_ids))


def _find_clusters(
    config: NearDedupConfig, spill_dir: str, chunk_stats: list[dict[str, int]], parallel: bool
) -> NearDedupResult:
    num_documents = sum(stats["num_documents"] for stats in chunk_stats)
    num_records = num_documents - sum(stats["num_without_shingles"] for stats in chunk_stats)
    num_ranges = max(1, -(-num_records // config.max_records_in_memory))
    bounds = [KEY_SPACE * index // num_ranges for index in range(num_ranges + 1)]
    calls = [
        (
            str(Path(spill_dir) / f"band-{band:03d}"),
            bounds[index],
            bounds[index + 1],
            config.max_records_in_memory,
        )
        for band in range(config.bands)
        for index in range(num_ranges)
    ]
    log.info("near-dedup: %d documents, %d pair-finding task(s)", num_documents, len(calls))
    edge_parts = _map(band_range_edges, calls, parallel) if num_records else []
    edges = np.unique(np.concatenate(edge_parts), axis=0) if edge_parts else np.zeros((0, 2), np.int64)
    drop_keys, histogram = clusters(edges)
    sizes = {1: num_documents - sum(size * count for size, count in histogram.items()), **histogram}
    stats = {
        "num_documents": num_documents,
        "num_without_shingles": num_documents - num_records,
        "num_edges": len(edges),
        "num_clusters": sum(histogram.values()),
        "num_dropped": len(drop_keys),
        # Size 1: documents in no cluster (those without shingles included).
        "cluster_size_histogram": {str(size): count for size, count in sizes.items()},
    }
    log.info("near-dedup: %d cluster(s), %d document(s) dropped", stats["num_clusters"], len(drop_keys))
    return NearDedupResult(drop_keys, stats, edges)


def _map(fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]], parallel: bool) -> list[Any]:
    """[fn(*args) for args in calls], as Ray tasks when `parallel` (at most 2 per CPU in flight, so
    a streamed input is never all in the object store at once); results in call order."""
    if not parallel:
        return [fn(*args) for args in calls]
    import ray

    from lmforge.infra.ray_runtime import cluster_cpus, ensure_ray

    ensure_ray()
    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    max_in_flight = 2 * cluster_cpus()
    pending: dict[Any, int] = {}
    done: dict[int, Any] = {}
    for index, args in enumerate(calls):
        if len(pending) >= max_in_flight:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready)] = ray.get(ready)
        pending[remote.remote(*args)] = index
    for ref, index in pending.items():
        done[index] = ray.get(ref)
    return [done[index] for index in range(len(done))]
