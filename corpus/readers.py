"""Readers registry: one streaming reader per input format.

A reader takes one target (a local file, or for `hf` a dataset name or directory) and yields
`RawRecord`s in file order. A record that cannot be read yields a record with `text=None` and a
`reason` (`invalid_utf8`, `malformed_json`, `missing_text_field`, ...) so it is counted, not fatal.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from lmforge.core.registry import Registry
from lmforge.corpus.config import SourceConfig


class RawRecord(NamedTuple):
    key: str  # the document's id within its target (an id attribute or an ordinal); made global later
    text: str | None
    reason: str | None = None


Reader = Callable[[str, SourceConfig], Iterator[RawRecord]]
READERS: Registry[Reader] = Registry("reader")


def decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_record(key: str, data: bytes) -> RawRecord:
    text = decode(data)
    return RawRecord(key, text) if text is not None else RawRecord(key, None, "invalid_utf8")


def field_record(key: str, row: object, field: str) -> RawRecord:
    """The `field` of a mapping row, or the reason it is unusable."""
    if not isinstance(row, dict):
        return RawRecord(key, None, "not_an_object")
    value = row.get(field)
    if value is None:
        return RawRecord(key, None, "missing_text_field")
    if not isinstance(value, str):
        return RawRecord(key, None, "invalid_text_field")
    if not is_valid_unicode(value):  # lone surrogates: JSON "\\ud800" escapes, or bad bytes in CSV
        return RawRecord(key, None, "invalid_utf8")
    return RawRecord(key, value)


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@READERS.register("text")
def read_text(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """Plain text: one document per file, per line, or per blank-line-separated paragraph."""
    if source.text_mode == "file":
        yield text_record("0", Path(target).read_bytes())
        return
    with open(target, "rb") as handle:
        if source.text_mode == "line":
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    yield text_record(str(line_number), line)
            return
        yield from _paragraphs(handle)


def _paragraphs(lines: Iterable[bytes]) -> Iterator[RawRecord]:
    """Blocks of non-blank lines, keyed by the 1-based line number where each starts."""
    block: list[bytes] = []
    start = 0
    for line_number, line in enumerate(lines, start=1):
        if line.strip():
            if not block:
                start = line_number
            block.append(line)
        elif block:
            yield text_record(str(start), b"".join(block))
            block = []
    if block:
        yield text_record(str(start), b"".join(block))


@READERS.register("jsonl")
def read_jsonl(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    with open(target, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            key = str(line_number)
            text = decode(line)
            if text is None:
                yield RawRecord(key, None, "invalid_utf8")
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                yield RawRecord(key, None, "malformed_json")
                continue
            yield field_record(key, row, source.text_field)


def _read_delimited(target: str, source: SourceConfig, dialect: dict) -> Iterator[RawRecord]:
    # surrogateescape keeps bad bytes as lone surrogates, so one bad row does not end the file.
    with open(target, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, **dialect)
        header = next(reader, None)
        if header is None:
            return
        for row_number, row in enumerate(reader, start=1):
            key = str(row_number)
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield RawRecord(key, None, "malformed_row")
                continue
            yield field_record(key, dict(zip(header, row, strict=True)), source.text_field)


@READERS.register("csv")
def read_csv(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """CSV with a header row and standard quoting."""
    return _read_delimited(target, source, {})


@READERS.register("tsv")
def read_tsv(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """TSV with a header row; quotes are literal text (GLUE style), not field delimiters."""
    return _read_delimited(target, source, {"delimiter": "\t", "quoting": csv.QUOTE_NONE})


@READERS.register("parquet")
def read_parquet(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(target)
    except Exception:  # pyarrow raises several types for a corrupt or non-parquet file
        yield RawRecord("file", None, "unreadable_file")
        return
    num_rows = parquet_file.metadata.num_rows
    if source.text_field not in parquet_file.schema_arrow.names:
        for row_number in range(num_rows):
            yield RawRecord(str(row_number), None, "missing_text_field")
        return
    row_number = 0
    for batch in parquet_file.iter_batches(batch_size=4096, columns=[source.text_field]):
        for value in batch.column(0).to_pylist():
            yield field_record(str(row_number), {source.text_field: value}, source.text_field)
            row_number += 1
