"""Readers registry: one streaming reader per input format.

A reader takes one target (a local file, or for `hf` a dataset name or directory) and yields
`RawRecord`s in file order. A record that cannot be read yields a record with `text=None` and a
`reason` (`invalid_utf8`, `malformed_json`, `missing_text_field`, `document_too_large`, ...) so it is
counted, not fatal: one bad record never ends the file's remaining ones.

Text formats are read as UTF-8 only. A binary file (NUL bytes in its first 8 KiB, see `is_binary_file`)
is one `binary_file` record (key `file`) rather than one `invalid_utf8` per line; UTF-16 text, which
is full of NULs, counts as binary too. Empty or whitespace-only files yield no records.
"""

from __future__ import annotations

import codecs
import csv
import functools
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from lmforge.core.registry import Registry
from lmforge.corpus.config import SourceConfig

BINARY_SNIFF_BYTES = 8192
SKIP_CHUNK_BYTES = 1024 * 1024  # how much of an oversized line is read at a time while skipping it


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


def too_large(num_bytes: float, max_bytes: int | None) -> bool:
    return max_bytes is not None and num_bytes > max_bytes


def field_record(key: str, row: object, field: str, max_bytes: int | None = None) -> RawRecord:
    """The `field` of a mapping row, or the reason it is unusable (`max_bytes`: of its UTF-8 form)."""
    if not isinstance(row, dict):
        return RawRecord(key, None, "not_an_object")
    value = row.get(field)
    if value is None:
        return RawRecord(key, None, "missing_text_field")
    if not isinstance(value, str):
        return RawRecord(key, None, "invalid_text_field")
    if too_large(len(value), max_bytes):  # every character is at least one byte: skip encoding it
        return RawRecord(key, None, "document_too_large")
    try:
        encoded_size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: JSON "\\ud800" escapes, or bad bytes in CSV
        return RawRecord(key, None, "invalid_utf8")
    if too_large(encoded_size, max_bytes):
        return RawRecord(key, None, "document_too_large")
    return RawRecord(key, value)


def is_binary_file(target: str) -> bool:
    """Whether a file's first 8 KiB hold a NUL byte and either are not UTF-8 or are a quarter NULs or
    more (UTF-16, a zeroed file). A stray NUL in UTF-8 text is not enough: normalization drops it."""
    with open(target, "rb") as handle:
        head = handle.read(BINARY_SNIFF_BYTES)
    if b"\0" not in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character cut off is fine
    except UnicodeDecodeError:
        return True
    return head.count(b"\0") * 4 >= len(head)


def skips_binary_files(reader: Reader) -> Reader:
    """Wrap a text-format reader: a binary file (or one that cannot be opened) is one record."""

    @functools.wraps(reader)
    def checked(target: str, source: SourceConfig) -> Iterator[RawRecord]:
        try:
            binary = is_binary_file(target)
        except OSError:  # unreadable: permissions, a directory, removed since it was listed
            yield RawRecord("file", None, "unreadable_file")
            return
        if binary:
            yield RawRecord("file", None, "binary_file")
            return
        yield from reader(target, source)

    return checked


def bounded_lines(handle: BinaryIO, max_bytes: int | None) -> Iterator[bytes | None]:
    """The lines of a binary file, newline included; None stands for a line longer than `max_bytes`,
    which is skipped a chunk at a time rather than held in memory."""
    if max_bytes is None:
        yield from handle
        return
    while line := handle.readline(max_bytes + 1):
        if len(line) <= max_bytes:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = handle.readline(SKIP_CHUNK_BYTES)
        yield None


@READERS.register("text")
@skips_binary_files
def read_text(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """Plain text: one document per file, per line, or per blank-line-separated paragraph."""
    max_bytes = source.max_document_bytes
    if source.text_mode == "file":
        path = Path(target)
        if too_large(path.stat().st_size, max_bytes):
            yield RawRecord("0", None, "document_too_large")
            return
        data = path.read_bytes()
        if data.strip():
            yield text_record("0", data)
        return
    with open(target, "rb") as handle:
        lines = bounded_lines(handle, max_bytes)
        if source.text_mode == "line":
            for line_number, line in enumerate(lines, start=1):
                if line is None:
                    yield RawRecord(str(line_number), None, "document_too_large")
                elif line.strip():
                    yield text_record(str(line_number), line)
            return
        yield from _paragraphs(lines, max_bytes)


class DocumentBuffer:
    """The lines of one document being read; once they exceed `max_bytes` only their size is kept."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.lines: list[bytes] = []
        self.size: float = 0  # inf once a line was too large to read (see bounded_lines)

    def add(self, line: bytes | None) -> None:
        self.size += math.inf if line is None else len(line)
        if too_large(self.size, self.max_bytes):
            self.lines = []
        elif line is not None:
            self.lines.append(line)

    def record(self, key: str) -> RawRecord:
        if too_large(self.size, self.max_bytes):
            return RawRecord(key, None, "document_too_large")
        return text_record(key, b"".join(self.lines))


def _paragraphs(lines: Iterable[bytes | None], max_bytes: int | None) -> Iterator[RawRecord]:
    """Blocks of non-blank lines, keyed by the 1-based line number where each starts."""
    block: DocumentBuffer | None = None
    start = 0
    for line_number, line in enumerate(lines, start=1):
        if line is not None and not line.strip():
            if block is not None:
                yield block.record(str(start))
            block = None
            continue
        if block is None:
            block, start = DocumentBuffer(max_bytes), line_number
        block.add(line)
    if block is not None:
        yield block.record(str(start))


@READERS.register("jsonl")
@skips_binary_files
def read_jsonl(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """One JSON object per line; the line's bytes count against `max_document_bytes`."""
    with open(target, "rb") as handle:
        for line_number, line in enumerate(bounded_lines(handle, source.max_document_bytes), start=1):
            key = str(line_number)
            if line is None:
                yield RawRecord(key, None, "document_too_large")
                continue
            if not line.strip():
                continue
            text = decode(line)
            if text is None:
                yield RawRecord(key, None, "invalid_utf8")
                continue
            try:
                row = json.loads(text)
            # ValueError covers JSONDecodeError and integers over Python's digit limit;
            # RecursionError, arrays nested thousands deep.
            except (ValueError, RecursionError):
                yield RawRecord(key, None, "malformed_json")
                continue
            yield field_record(key, row, source.text_field, source.max_document_bytes)


def _read_delimited(target: str, source: SourceConfig, dialect: dict) -> Iterator[RawRecord]:
    # surrogateescape keeps bad bytes as lone surrogates, so one bad row does not end the file.
    with open(target, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = _csv_rows(csv.reader(handle, **dialect), source.max_document_bytes)
        header = next(rows, None)
        if header is None:
            return
        if isinstance(header, str):
            yield RawRecord("file", None, "malformed_header")
            return
        for row_number, row in enumerate(rows, start=1):
            key = str(row_number)
            if isinstance(row, str):
                yield RawRecord(key, None, row)
            elif not any(cell.strip() for cell in row):
                continue
            elif len(row) != len(header):
                yield RawRecord(key, None, "malformed_row")
            else:
                record = dict(zip(header, row, strict=True))
                yield field_record(key, record, source.text_field, source.max_document_bytes)


def _csv_rows(reader: Iterator[list[str]], max_bytes: int | None) -> Iterator[list[str] | str]:
    """The rows of a csv reader; a row it cannot parse comes back as the reason, and reading goes on.

    csv's field size limit is process-global, so it is set for each row and restored after; a field
    over `max_bytes` characters is then over `max_bytes` bytes too, and is never held whole.
    """
    field_limit = max_bytes if max_bytes is not None else sys.maxsize
    while True:
        saved_limit = csv.field_size_limit(field_limit)
        try:
            row: list[str] | str = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # csv resumes at the next line
            row = "document_too_large" if "field limit" in str(error) else "malformed_row"
        finally:
            csv.field_size_limit(saved_limit)  # before yielding: other readers may run meanwhile
        yield row


@READERS.register("csv")
@skips_binary_files
def read_csv(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """CSV with a header row and standard quoting."""
    return _read_delimited(target, source, {})


@READERS.register("tsv")
@skips_binary_files
def read_tsv(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """TSV with a header row; quotes are literal text (GLUE style), not field delimiters."""
    return _read_delimited(target, source, {"delimiter": "\t", "quoting": csv.QUOTE_NONE})


@READERS.register("parquet")
def read_parquet(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """The text column, a row group at a time; a row group that fails to decode is counted per row
    (`unreadable_row_group`) and the next one is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(target)
    except (pa.ArrowException, OSError):  # a corrupt, empty or non-parquet file
        yield RawRecord("file", None, "unreadable_file")
        return
    metadata = parquet_file.metadata
    if source.text_field not in parquet_file.schema_arrow.names:
        for row_number in range(metadata.num_rows):
            yield RawRecord(str(row_number), None, "missing_text_field")
        return
    first_row = 0
    for group in range(metadata.num_row_groups):
        group_rows = metadata.row_group(group).num_rows
        row_number = first_row
        batches = parquet_file.iter_batches(batch_size=4096, row_groups=[group], columns=[source.text_field])
        try:
            for batch in batches:
                for value in batch.column(0).to_pylist():
                    row = {source.text_field: value}
                    yield field_record(str(row_number), row, source.text_field, source.max_document_bytes)
                    row_number += 1
        except (pa.ArrowException, OSError):
            for unread in range(row_number, first_row + group_rows):
                yield RawRecord(str(unread), None, "unreadable_row_group")
        first_row += group_rows
