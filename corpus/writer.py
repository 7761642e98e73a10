"""Writes kept documents to `part-NNNNN.parquet` files of a fixed number of rows, deterministically."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])


class PartWriter:
    """Buffers rows and flushes every `rows_per_file`; same rows in -> byte-identical files out."""

    def __init__(self, output_dir: Path, rows_per_file: int) -> None:
        self.output_dir = output_dir
        self.rows_per_file = rows_per_file
        self.num_files = 0
        self._columns: dict[str, list[str]] = {name: [] for name in SCHEMA.names}

    def add(self, doc_id: str, source: str, text: str) -> None:
        self._columns["doc_id"].append(doc_id)
        self._columns["source"].append(source)
        self._columns["text"].append(text)
        if len(self._columns["doc_id"]) >= self.rows_per_file:
            self._flush()

    def close(self) -> None:
        if self._columns["doc_id"]:
            self._flush()

    def _flush(self) -> None:
        table = pa.table(self._columns, schema=SCHEMA)
        path = self.output_dir / f"part-{self.num_files:05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        self.num_files += 1
        self._columns = {name: [] for name in SCHEMA.names}
