"""The clean stage: Ray tasks read, normalize, filter, redact and write; deduplication is a step of its own.

Phase 1, one task per input file (work item): read, normalize, language ID, filters, decontamination
check, PII redaction. Every record and its verdict goes to `work/items/item-IIIII.parquet` (row =
record ordinal); kept documents' digests go to `work/digests/bucket-BBB/`, their MinHash band records
to `work/bands/`. The driver then applies the document caps in corpus order from the record counts.
Phase 2: exact dedup, one task per digest bucket (the first occurrence in corpus order stays), then
near dedup (corpus.near_dedup) over the documents exact dedup kept.
Phase 3, one task per item: apply the duplicate drops, write `part-IIIII-JJJJ.parquet` (and
`rejected/part-IIIII-JJJJ.parquet`), and count; the driver merges the counts in item order as they come.

A document's key is `(item << 32) | ordinal`, so corpus order and each duplicate cluster's
representative need no coordination: the output depends on the inputs and the config, never on the
number of workers. The driver holds no documents: per input file a few counts, the duplicate keys
(8 bytes per duplicate) and near-duplicate edges, and at most three samples per step.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.core.errors import ArtifactError
from lmforge.core.logs import get_logger
from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.decontam import DecontamIndex, DecontamReport, build_index
from lmforge.corpus.filters import apply_filters
from lmforge.corpus.inputs import WorkItem, work_items
from lmforge.corpus.langid import LanguageIdentifier
from lmforge.corpus.near_dedup import BandRecordWriter, KeyFilter, find_clusters
from lmforge.corpus.normalize import normalize_text
from lmforge.corpus.parallel import map_tasks
from lmforge.corpus.pii import PiiRedactor
from lmforge.corpus.readers import READERS
from lmforge.corpus.stats import PROGRESS_SECONDS, CleanStats
from lmforge.corpus.writer import PartWriter, output_schema

log = get_logger(__name__)
RECORDS_PER_BATCH = 1000
DIGEST_BUCKETS = 16  # exact dedup tasks; each holds 1/16 of the kept documents' digests (24 bytes each)
SNIPPET_CHARS = 300  # of a dropped document kept for the report's samples (all of it with rejected_documents)
KEY_SEPARATOR = "\x1f"  # between an eval set's name and an example id in the `contaminated` column
# Steps that drop documents besides the filters (which are named by their `name`).
READER, EMPTY, LANGUAGE_ID, DECONTAMINATION = "reader", "empty", "language_id", "decontamination"
EXACT_DEDUP, NEAR_DEDUP = "exact_dedup", "near_dedup"
DIGEST_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("key", "<i8")])
ITEM_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),  # kept: the cleaned text; dropped: a snippet, or all of it for the sink
        ("reason", pa.string()),  # "" for a kept document
        ("step", pa.string()),  # the step or filter that dropped it; "" for a kept document
        ("value", pa.float64()),  # what that step measured against its limit, when it says
        ("malformed", pa.bool_()),
        ("lines_removed", pa.list_(pa.int32())),  # per filter, in config order
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("contaminated", pa.list_(pa.string())),  # null: not checked
        ("pii", pa.list_(pa.int32())),  # replacements per kind of corpus.pii.kinds; null: not redacted
    ]
)


@dataclass(frozen=True)
class ScanResult:
    """What the driver keeps of one input file's phase 1: counts only."""

    num_records: int
    num_kept: int  # passed every per-document step (before caps and dedup)
    band_stats: dict[str, int] | None


def clean_corpus(
    config: CorpusConfig, data_dir: Path | None, output_dir: Path, work_dir: Path | str | None = None
) -> dict[str, Any]:
    """Clean every source into `output_dir/part-IIIII-JJJJ.parquet` (doc_id, source, text[, language,
    language_score]); returns the stats. `work_dir` holds intermediate files (a temporary directory
    when None or not a local path) and is emptied first."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.glob("part-*.parquet")) or any(output_dir.glob("rejected/*")):
        raise ArtifactError(
            f"{output_dir} already holds part-*.parquet or rejected/ files; clean into an empty directory"
        )
    items = work_items(config, data_dir)
    index = build_index(config.decontamination, data_dir) if config.decontamination else None
    with _work_area(work_dir) as work:
        return _clean(config, items, index, output_dir, work)


@contextmanager
def _work_area(work_dir: Path | str | None) -> Iterator[Path]:
    if work_dir is not None and "://" not in str(work_dir):
        work = Path(work_dir) / "clean"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-clean-") as tmp:
        yield Path(tmp)


def _clean(
    config: CorpusConfig, items: list[WorkItem], index: DecontamIndex | None, output_dir: Path, work: Path
) -> dict[str, Any]:
    log.info("cleaning %d input file(s) from %d source(s)", len(items), len(config.sources))
    index_arg: Any = index
    if index is not None:
        index.check("")  # builds its lookup table once, before it is shipped to the workers
        import ray

        from lmforge.infra.ray_runtime import ensure_ray

        ensure_ray()
        index_arg = ray.put(index)
    progress = _Progress(len(items))
    scans: list[ScanResult] = map_tasks(
        scan_item,
        (
            (number, item, config, index_arg, _read_limit(config, item), str(work))
            for number, item in enumerate(items)
        ),
        max_in_flight=config.num_workers,
        on_result=progress.scanned,
    )
    caps = _caps(config, items, scans)
    exact_keys = _exact_duplicates(config, caps, work)
    near_keys, near_stats = np.zeros(0, np.int64), None
    if config.near_dedup is not None:
        result = find_clusters(
            config.near_dedup,
            str(work / "bands"),
            [scan.band_stats or {} for scan in scans],
            parallel=True,
            key_filter=KeyFilter(np.array(caps, np.int64), exact_keys),
        )
        near_keys, near_stats = result.drop_keys, result.stats
    stats = CleanStats([source.path for source in config.sources], [f.name for f in config.filters])
    report = DecontamReport()
    merge = _InOrder(lambda number, result: _merge_item(stats, report, items[number], result))
    width = max(5, len(str(len(items) - 1)))
    map_tasks(
        finish_item,
        (
            (
                number,
                item,
                config,
                caps[number],
                _item_ordinals(exact_keys, number),
                _item_ordinals(near_keys, number),
                str(work),
                str(output_dir),
                width,
            )
            for number, item in enumerate(items)
        ),
        max_in_flight=config.num_workers,
        on_result=merge,
    )
    result_dict = stats.as_dict()
    result_dict["exact_dedup"] = {"enabled": config.dedup, "num_dropped": len(exact_keys)}
    if near_stats is not None:
        result_dict["near_dedup"] = _with_singletons(near_stats, stats.num_kept + len(near_keys))
    if index is not None:
        result_dict["decontamination"] = report.summary(index)
    log.info("cleaned corpus: %s", stats.summary())
    stats.raise_if_unusable()
    return result_dict


class _InOrder:
    """Calls `merge(index, result)` in index order as results arrive in any order: the driver holds
    only the results that arrived before an earlier one."""

    def __init__(self, merge: Any) -> None:
        self.merge, self.next_index = merge, 0
        self.waiting: dict[int, Any] = {}

    def __call__(self, index: int, result: Any) -> None:
        self.waiting[index] = result
        while self.next_index in self.waiting:
            self.merge(self.next_index, self.waiting.pop(self.next_index))
            self.next_index += 1


def _merge_item(
    stats: CleanStats, report: DecontamReport, item: WorkItem, result: tuple[CleanStats, DecontamReport]
) -> None:
    partial, partial_report = result
    stats.merge(item.source_index, partial)
    report.merge(partial_report)


def _with_singletons(near_stats: dict[str, Any], num_documents: int) -> dict[str, Any]:
    """Near-dedup stats with the documents it saw (exact dedup's survivors inside the caps) and the
    histogram's size-1 count, known once the last phase has counted them."""
    histogram = {size: count for size, count in near_stats["cluster_size_histogram"].items() if size != "1"}
    in_clusters = sum(int(size) * count for size, count in histogram.items())
    return {
        **near_stats,
        "num_documents": num_documents,
        "cluster_size_histogram": {"1": num_documents - in_clusters, **histogram},
    }


class _Progress:
    def __init__(self, num_items: int) -> None:
        self.num_items, self.num_done, self.num_records, self.num_kept = num_items, 0, 0, 0
        self._last_log = time.monotonic()

    def scanned(self, _index: int, scan: ScanResult) -> None:
        self.num_done += 1
        self.num_records += scan.num_records
        self.num_kept += scan.num_kept
        if time.monotonic() - self._last_log >= PROGRESS_SECONDS or self.num_done == self.num_items:
            self._last_log = time.monotonic()
            log.info(
                "clean: %d/%d file(s) read, %d records, %d passed the filters (before caps and dedup)",
                self.num_done,
                self.num_items,
                self.num_records,
                self.num_kept,
            )


def _read_limit(config: CorpusConfig, item: WorkItem) -> int | None:
    caps = [cap for cap in (config.sources[item.source_index].max_documents, config.max_documents) if cap]
    return min(caps) if caps else None


def _caps(config: CorpusConfig, items: list[WorkItem], scans: list[ScanResult]) -> list[int]:
    """Per item, how many of its records count: the source and total caps applied in corpus order."""
    source_left = [source.max_documents for source in config.sources]
    total_left = config.max_documents
    caps = []
    for item, scan in zip(items, scans, strict=True):
        take = scan.num_records
        left = source_left[item.source_index]
        take = min([take, *(cap for cap in (left, total_left) if cap is not None)])
        if left is not None:
            source_left[item.source_index] = left - take
        if total_left is not None:
            total_left -= take
        caps.append(take)
    return caps


def _item_ordinals(keys: np.ndarray, number: int) -> np.ndarray:
    """The ordinals within item `number` of the ascending document `keys`."""
    low, high = np.searchsorted(keys, [number << 32, (number + 1) << 32])
    return keys[low:high] & 0xFFFFFFFF


def document_key(number: int, ordinal: int) -> int:
    return (number << 32) | ordinal


# ---- phase 1 -------------------------------------------------------------------------------------


def scan_item(
    number: int,
    item: WorkItem,
    config: CorpusConfig,
    index: DecontamIndex | None,
    limit: int | None,
    work: str,
) -> ScanResult:
    """Phase 1 for one input file (a Ray task): every record's verdict to the item file."""
    source = config.sources[item.source_index]
    language_id = LanguageIdentifier(config.language_id) if config.language_id else None
    redactor = PiiRedactor(config.pii) if config.pii else None
    bands = (
        BandRecordWriter(number, config.near_dedup, str(Path(work) / "bands"))
        if config.near_dedup is not None
        else None
    )
    item_path = Path(work) / "items" / f"item-{number:05d}.parquet"
    item_path.parent.mkdir(parents=True, exist_ok=True)
    num_kept = 0
    rows = _Rows(config.rejected_documents)
    with pq.ParquetWriter(item_path, ITEM_SCHEMA, compression="lz4") as writer:
        for ordinal, record in enumerate(READERS.get(source.format)(item.target, source)):
            if limit is not None and ordinal >= limit:
                break
            doc_id = f"{item.source_index}/{item.name}/{record.key}"
            if record.reason is not None:
                no_lines = (0,) * len(config.filters)
                rows.add(doc_id, Verdict("", record.reason, READER, None, no_lines), malformed=True)
            else:
                verdict = clean_document(
                    normalize_text(record.text or "", config.normalization),
                    config,
                    language_id,
                    index,
                    redactor,
                )
                rows.add(doc_id, verdict)
                if verdict.reason is None:
                    key = document_key(number, ordinal)
                    num_kept += 1
                    digest = hashlib.blake2b(verdict.text.encode("utf-8"), digest_size=16).digest()
                    rows.digest_batch.append(
                        (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"), key)
                    )
                    if bands is not None:
                        rows.band_batch.append((key, verdict.text))
            if len(rows) >= RECORDS_PER_BATCH:
                rows.flush(writer, bands)
        rows.flush(writer, bands)
    if config.dedup:
        digests = np.concatenate(rows.digest_parts) if rows.digest_parts else np.zeros(0, DIGEST_DTYPE)
        _write_digests(digests, Path(work) / "digests", number)
    return ScanResult(rows.num_written, num_kept, bands.close() if bands else None)


@dataclass(frozen=True)
class Verdict:
    """One document's outcome of the per-document steps: `reason` None keeps `text`."""

    text: str
    reason: str | None
    step: str | None
    value: float | None
    lines_removed: tuple[int, ...]
    language: str | None = None
    language_score: float | None = None
    contaminated: list[str] | None = None
    pii: list[int] | None = None


def clean_document(
    text: str,
    config: CorpusConfig,
    language_id: LanguageIdentifier | None,
    index: DecontamIndex | None,
    redactor: PiiRedactor | None,
) -> Verdict:
    """One readable document through language ID, filters, decontamination and PII redaction."""
    no_lines = (0,) * len(config.filters)
    if not text:
        return Verdict(text, "empty", EMPTY, None, no_lines)
    language = score = None
    if language_id is not None:
        reason, language, score = language_id.check(text)
        if reason is not None:
            return Verdict(text, reason, LANGUAGE_ID, score, no_lines, language, score)
    outcome = apply_filters(config.filters, text)
    text = outcome.text
    if outcome.reason is not None:
        step = config.filters[outcome.filter_index].name if outcome.filter_index is not None else EMPTY
        return Verdict(text, outcome.reason, step, outcome.value, outcome.lines_removed, language, score)
    contaminated = None
    if index is not None and config.decontamination is not None:
        matches = index.check(text)
        contaminated = sorted(
            f"{name}{KEY_SEPARATOR}{example}" for name, ids in matches.items() for example in ids
        )
        if matches and config.decontamination.drop:
            lines, value = outcome.lines_removed, float(len(contaminated))
            return Verdict(text, "contaminated", DECONTAMINATION, value, lines, language, score, contaminated)
    pii = None
    if redactor is not None:
        text, counts = redactor.redact(text)
        pii = [counts[kind] for kind in redactor.config.kinds]
    return Verdict(text, None, None, None, outcome.lines_removed, language, score, contaminated, pii)


class _Rows:
    """Item-file rows buffered per batch; kept documents' texts buffered for their band records."""

    def __init__(self, keep_dropped_text: bool) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in ITEM_SCHEMA.names}
        self.band_batch: list[tuple[int, str]] = []
        self.digest_batch: list[tuple[int, int, int]] = []
        self.digest_parts: list[np.ndarray] = []  # 24 bytes per kept document of the file
        self.num_written = 0
        self.keep_dropped_text = keep_dropped_text

    def __len__(self) -> int:
        return len(self.columns["doc_id"])

    def add(self, doc_id: str, verdict: Verdict, malformed: bool = False) -> None:
        text = verdict.text
        if verdict.reason is not None and not self.keep_dropped_text:
            text = text[:SNIPPET_CHARS]
        row = {
            "doc_id": doc_id,
            "text": text,
            "reason": verdict.reason or "",
            "step": verdict.step or "",
            "value": verdict.value,
            "malformed": malformed,
            "lines_removed": list(verdict.lines_removed),
            "language": verdict.language,
            "language_score": verdict.language_score,
            "contaminated": verdict.contaminated,
            "pii": verdict.pii,
        }
        for name, cell in row.items():
            self.columns[name].append(cell)

    def flush(self, writer: pq.ParquetWriter, bands: BandRecordWriter | None) -> None:
        if len(self):
            writer.write_table(pa.table(self.columns, schema=ITEM_SCHEMA))
            self.num_written += len(self)
            self.columns = {name: [] for name in ITEM_SCHEMA.names}
        if self.digest_batch:
            self.digest_parts.append(np.array(self.digest_batch, dtype=DIGEST_DTYPE))
            self.digest_batch = []
        if bands is not None and self.band_batch:
            keys, texts = zip(*self.band_batch, strict=True)
            bands.add(np.array(keys, np.int64), list(texts))
            self.band_batch = []


def _write_digests(digests: np.ndarray, root: Path, number: int) -> None:
    buckets = digests["hi"] % DIGEST_BUCKETS
    for bucket in range(DIGEST_BUCKETS):
        path = root / f"bucket-{bucket:03d}" / f"item-{number:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, digests[buckets == bucket])


# ---- phase 2 -------------------------------------------------------------------------------------


def _exact_duplicates(config: CorpusConfig, caps: list[int], work: Path) -> np.ndarray:
    if not config.dedup:
        return np.zeros(0, np.int64)
    caps_array = np.array(caps, np.int64)
    calls = [(str(work / "digests" / f"bucket-{bucket:03d}"), caps_array) for bucket in range(DIGEST_BUCKETS)]
    parts = map_tasks(bucket_duplicates, calls, max_in_flight=config.num_workers)
    keys = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    log.info("exact dedup: %d duplicate document(s)", len(keys))
    return keys


def bucket_duplicates(bucket_dir: str, caps: np.ndarray) -> np.ndarray:
    """Phase 2 for one digest bucket (a Ray task): the keys of all but the first copy of each text."""
    files = sorted(Path(bucket_dir).glob("item-*.npy"))
    digests = np.concatenate([np.load(path) for path in files]) if files else np.zeros(0, DIGEST_DTYPE)
    keys = digests["key"]
    digests = digests[(keys & 0xFFFFFFFF) < caps[keys >> 32]]
    order = np.lexsort((digests["key"], digests["lo"], digests["hi"]))
    digests = digests[order]
    repeated = np.zeros(len(digests), dtype=bool)
    if len(digests) > 1:
        repeated[1:] = (digests["hi"][1:] == digests["hi"][:-1]) & (digests["lo"][1:] == digests["lo"][:-1])
    return np.asarray(digests["key"][repeated], dtype=np.int64)


# ---- phase 3 -------------------------------------------------------------------------------------


def finish_item(
    number: int,
    item: WorkItem,
    config: CorpusConfig,
    cap: int,
    exact_ordinals: np.ndarray,
    near_ordinals: np.ndarray,
    work: str,
    output_dir: str,
    width: int = 5,
) -> tuple[CleanStats, DecontamReport]:
    """Phase 3 for one input file (a Ray task): drop duplicates, write its parts, count everything.
    `width`: digits of the file number in output names, so names sort in corpus order."""
    source_path = config.sources[item.source_index].path
    stats = CleanStats([source_path], [f.name for f in config.filters])
    report = DecontamReport()
    kinds = list(config.pii.kinds) if config.pii else []
    schema = output_schema(config.language_id is not None)
    stem = f"part-{number:0{width}d}"
    parts = PartWriter(Path(output_dir), config.rows_per_file, stem, schema)
    rejected = (
        PartWriter(Path(output_dir) / "rejected", config.rows_per_file, stem, REJECTED_SCHEMA)
        if config.rejected_documents
        else None
    )
    exact, near = set(exact_ordinals.tolist()), set(near_ordinals.tolist())
    item_path = Path(work) / "items" / f"item-{number:05d}.parquet"
    ordinal = 0
    for batch in pq.ParquetFile(item_path).iter_batches(batch_size=RECORDS_PER_BATCH):
        if ordinal >= cap:
            break
        for row in batch.slice(0, cap - ordinal).to_pylist():
            reason, step = row["reason"] or None, row["step"] or None
            if reason is None and ordinal in exact:
                reason, step = "duplicate", EXACT_DEDUP
            elif reason is None and ordinal in near:
                reason, step = "near_duplicate", NEAR_DEDUP
            if row["contaminated"] is not None:
                report.add(_matches(row["contaminated"]))
            sample = None
            if reason is not None:
                sample = {"doc_id": row["doc_id"], "reason": reason, "value": row["value"]}
                sample["text"] = row["text"][:SNIPPET_CHARS]
            stats.count(
                0,
                reason,
                len(row["text"]) if reason is None else 0,
                row["malformed"],
                row["lines_removed"],
                step=step,
                sample=sample,
            )
            if reason is None:
                if row["pii"] is not None:
                    stats.pii.update(dict(zip(kinds, row["pii"], strict=True)))
                if row["language"] is not None:
                    stats.languages[row["language"]] += 1
                parts.add(
                    {
                        "doc_id": row["doc_id"],
                        "source": source_path,
                        "text": row["text"],
                        "language": row["language"],
                        "language_score": row["language_score"],
                    }
                )
            elif rejected is not None:
                rejected.add({**row, "source": source_path, "reason": reason, "step": step})
            ordinal += 1
    parts.close()
    if rejected is not None:
        rejected.close()
    stats.num_output_files = parts.num_files
    return stats, report


REJECTED_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("value", pa.float64()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
    ]
)


def _matches(contaminated: list[str]) -> dict[str, set[str]]:
    matches: dict[str, set[str]] = {}
    for entry in contaminated:
        name, example = entry.split(KEY_SEPARATOR, 1)
        matches.setdefault(name, set()).add(example)
    return matches
