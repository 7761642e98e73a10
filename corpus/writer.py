"""Writes rows to Parquet files of at most a fixed number of rows, deterministically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])
LANGUAGE_COLUMNS = [("language", pa.string()), ("language_score", pa.float64())]


def output_schema(with_language: bool) -> pa.Schema:
    """The clean stage's output columns: doc_id, source, text, and language ID's when it ran."""
    return pa.schema([*SCHEMA, *(LANGUAGE_COLUMNS if with_language else [])])


class PartWriter:
    """Buffers rows and flushes every `rows_per_file` to `{stem}-JJJJ.parquet`; same rows in ->
    byte-identical files out. Columns a row has beyond the schema's are ignored."""

    def __init__(
        self,
        output_dir: Path,
        rows_per_file: int,
        stem: str = "part",
        schema: pa.Schema = SCHEMA,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.rows_per_file = rows_per_file
        self.stem, self.schema = stem, schema
        self.num_files = 0
        self._columns: dict[str, list[Any]] = {name: [] for name in schema.names}

    def add(self, row: dict[str, Any]) -> None:
        for name, column in self._columns.items():
            column.append(row[name])
        if len(self._columns["doc_id"]) >= self.rows_per_file:
            self._flush()

    def close(self) -> None:
        if self._columns["doc_id"]:
            self._flush()

    def _flush(self) -> None:
        table = pa.table(self._columns, schema=self.schema)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table, self.output_dir / f"{self.stem}-{self.num_files:04d}.parquet", compression="zstd"
        )
        self.num_files += 1
        self._columns = {name: [] for name in self.schema.names}
