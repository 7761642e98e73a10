"""The clean stage: read sources in parallel with Ray Data, normalize, filter, dedup, write Parquet.

Workers (one Ray task per input file) read, normalize and filter; every record comes back with its
drop reason so counts are exact. The driver consumes the records in deterministic order, applies the
document caps and exact dedup (first occurrence wins), and writes `part-NNNNN.parquet`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from lmforge.core.errors import ArtifactError
from lmforge.core.logs import get_logger
from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.filters import apply_filters
from lmforge.corpus.inputs import WorkItem, work_items
from lmforge.corpus.normalize import normalize_text
from lmforge.corpus.readers import READERS
from lmforge.corpus.stats import CleanStats
from lmforge.corpus.writer import PartWriter

log = get_logger(__name__)
RECORDS_PER_BATCH = 1000
KEPT = ""  # the reason column's value for a kept record
CHUNK_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source_index", pa.int32()),
        ("text", pa.string()),
        ("reason", pa.string()),
        ("malformed", pa.bool_()),
        ("digest", pa.binary()),
        ("lines_removed", pa.list_(pa.int32())),  # per filter, in config order
    ]
)


def clean_corpus(config: CorpusConfig, data_dir: Path | None, output_dir: Path) -> dict[str, Any]:
    """Clean every source into `output_dir/part-NNNNN.parquet` (doc_id, source, text); returns stats."""
    import ray.data

    from lmforge.infra.ray_runtime import ensure_ray

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.glob("part-*.parquet")):
        raise ArtifactError(f"{output_dir} already holds part-*.parquet files; clean into an empty directory")
    items = work_items(config, data_dir)
    ensure_ray()
    log.info("cleaning %d input(s) from %d source(s)", len(items), len(config.sources))
    rows = [{"source_index": item.source_index, "target": item.target, "name": item.name} for item in items]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _read_and_filter,  # type: ignore[arg-type]  # Ray's stubs do not model fn_kwargs
        batch_size=1,
        fn_kwargs={"config": config},
        batch_format="pyarrow",
    )
    stats = CleanStats([source.path for source in config.sources], [f.name for f in config.filters])
    writer = PartWriter(output_dir, config.rows_per_file)
    try:
        _consume(config, dataset, stats, writer)
    finally:
        writer.close()
    stats.num_output_files = writer.num_files
    result = stats.as_dict()
    log.info("cleaned corpus: %s", stats.summary())
    stats.raise_if_unusable()
    return result


def _consume(config: CorpusConfig, dataset: Any, stats: CleanStats, writer: PartWriter) -> None:
    """Apply caps and dedup in record order; stop reading once the total cap is reached."""
    seen_digests: set[bytes] = set()
    source_caps = [source.max_documents for source in config.sources]
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        records = zip(*(columns[name] for name in CHUNK_SCHEMA.names), strict=True)
        for doc_id, source_index, text, reason, malformed, digest, lines_removed in records:
            cap = source_caps[source_index]
            if cap is not None and stats.per_source[source_index].num_read >= cap:
                continue
            if reason == KEPT and config.dedup:
                if digest in seen_digests:
                    reason = "duplicate"
                else:
                    seen_digests.add(digest)
            stats.count(source_index, reason or None, len(text), malformed, lines_removed)
            if reason == KEPT:
                writer.add(doc_id, config.sources[source_index].path, text)
            if config.max_documents is not None and stats.num_read >= config.max_documents:
                return
        stats.log_progress(log)


def _read_and_filter(batch: Any, config: CorpusConfig) -> Iterator[pa.Table]:
    """Ray Data worker: one work item in, its records out in chunks (each with its drop reason)."""
    (item,) = [WorkItem(**row) for row in batch.to_pylist()]
    source = config.sources[item.source_index]
    limit = min(cap for cap in (source.max_documents, config.max_documents, float("inf")) if cap is not None)
    chunk: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    no_lines_removed = (0,) * len(config.filters)
    for num_records, record in enumerate(READERS.get(source.format)(item.target, source), start=1):
        text, reason, lines_removed = "", record.reason, no_lines_removed
        if reason is None:
            outcome = apply_filters(config.filters, normalize_text(record.text or "", config.normalization))
            text, reason, lines_removed = outcome.text, outcome.reason, outcome.lines_removed
        chunk["doc_id"].append(f"{item.source_index}/{item.name}/{record.key}")
        chunk["source_index"].append(item.source_index)
        # Dropped texts are not shipped back to the driver; kept ones carry a digest for dedup.
        chunk["text"].append(text if reason is None else "")
        chunk["reason"].append(reason or KEPT)
        chunk["malformed"].append(record.reason is not None)
        chunk["digest"].append(
            hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() if reason is None else b""
        )
        chunk["lines_removed"].append(lines_removed)
        if len(chunk["doc_id"]) >= RECORDS_PER_BATCH:
            yield pa.table(chunk, schema=CHUNK_SCHEMA)
            chunk = {name: [] for name in CHUNK_SCHEMA.names}
        if num_records >= limit:
            break
    if chunk["doc_id"]:
        yield pa.table(chunk, schema=CHUNK_SCHEMA)
