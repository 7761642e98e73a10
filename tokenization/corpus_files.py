"""Reading the cleaned corpus (`part-NNNNN.parquet` with doc_id, source, text) as a stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.core.errors import DataError

CORPUS_GLOB = "part-*.parquet"
REQUIRED_COLUMNS = ("doc_id", "text")


def list_corpus_files(corpus_dir: Path) -> list[Path]:
    """The corpus part files in order; DataError if there are none or one lacks a needed column."""
    import pyarrow.parquet as pq

    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise DataError(f"corpus directory {corpus_dir} does not exist")
    files = sorted(corpus_dir.glob(CORPUS_GLOB))
    if not files:
        raise DataError(f"corpus directory {corpus_dir} holds no {CORPUS_GLOB} files")
    for path in files:
        names = pq.read_schema(path).names
        missing = [column for column in REQUIRED_COLUMNS if column not in names]
        if missing:
            raise DataError(f"corpus file {path} lacks column(s) {missing} (has {names})")
    return files


def iter_text_batches(
    files: Sequence[Path], max_documents: int | None = None, batch_size: int = 1024
) -> Iterator[list[str]]:
    """Texts in corpus order, a Parquet batch at a time, stopping after `max_documents`."""
    import pyarrow.parquet as pq

    remaining = max_documents
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["text"]):
            # A null text is an empty document, not a reason to stop training.
            texts = [text or "" for text in batch.column(0).to_pylist()]
            if remaining is not None:
                texts = texts[:remaining]
                remaining -= len(texts)
            if texts:
                yield texts
            if remaining == 0:
                return
