"""Readers on bad input: each problem is one record with its reason, and reading goes on after it."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.corpus import READERS, CorpusConfig, SourceConfig, clean_corpus

pytestmark = pytest.mark.unit

TEXT_FORMATS = ["text", "jsonl", "csv", "tsv", "wikiextractor"]
FIFTY_MB = 50 * 1024 * 1024


def read(fmt: str, target: Path, **fields) -> list[tuple[str, str | None, str | None]]:
    source = SourceConfig(path=str(target), format=fmt, **fields)
    return [tuple(record) for record in READERS.get(fmt)(str(target), source)]


def reasons(records: list[tuple[str, str | None, str | None]]) -> list[str | None]:
    return [reason for _, _, reason in records]


def documents(fmt: str, texts: list[bytes]) -> bytes:
    """`texts` written as one file of format `fmt`, one document each (texts hold no newlines)."""
    if fmt == "text":
        return b"".join(text + b"\n\n" for text in texts)
    if fmt == "jsonl":
        return b"".join(b'{"text": "' + text + b'"}\n' for text in texts)
    if fmt in ("csv", "tsv"):
        separator = b"," if fmt == "csv" else b"\t"
        return (
            b"id"
            + separator
            + b"text\n"
            + b"".join(b"%d" % i + separator + t + b"\n" for i, t in enumerate(texts))
        )
    return b"".join(b'<doc id="%d">\n' % i + text + b"\n</doc>\n" for i, text in enumerate(texts))


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_binary_file_is_one_record(tmp_path, fmt):
    path = tmp_path / "blob.bin"
    # Valid-looking documents after the NUL: the reader must not read on into them.
    path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\n" * 50 + documents(fmt, [b"fine"] * 3))
    assert read(fmt, path) == [("file", None, "binary_file")]


@pytest.mark.parametrize(
    "content",
    ["first line\nsecond line\n".encode("utf-16"), "no byte order mark\n".encode("utf-16-le"), b"\0" * 100],
    ids=["utf16", "utf16_without_bom", "zeroed"],
)
def test_utf16_and_zeroed_files_count_as_binary(tmp_path, content):
    path = tmp_path / "a.txt"
    path.write_bytes(content)
    assert read("text", path, text_mode="line") == [("file", None, "binary_file")]


def test_a_stray_nul_in_utf8_text_is_not_binary(tmp_path):
    path = tmp_path / "stray.txt"
    path.write_bytes(b"ab\0cd caf\xc3\xa9\n\n" + b"a" * 9000 + b"\n\nlast\n")
    assert read("text", path) == [
        ("1", "ab\0cd caf\u00e9\n", None),
        ("3", "a" * 9000 + "\n", None),
        ("5", "last\n", None),
    ]
    path.write_bytes(b"a" * 9000 + b"\n\nafter \0\xff\n")  # a NUL after the first 8 KiB is not looked at
    assert read("text", path) == [("1", "a" * 9000 + "\n", None), ("3", None, "invalid_utf8")]


def test_unopenable_target_is_unreadable_file(tmp_path):
    assert read("jsonl", tmp_path) == [("file", None, "unreadable_file")]  # a directory in a glob


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("content", [b"", b"  \n\n\t\r\n  "], ids=["zero_bytes", "whitespace"])
def test_empty_file_yields_nothing(tmp_path, fmt, content):
    path = tmp_path / "empty"
    path.write_bytes(content)
    for mode in ("file", "line", "paragraph") if fmt == "text" else ("paragraph",):
        assert read(fmt, path, text_mode=mode) == []


def test_empty_parquet(tmp_path):
    no_rows = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), no_rows)
    assert read("parquet", no_rows) == []
    zero_bytes = tmp_path / "zero.parquet"
    zero_bytes.write_bytes(b"")
    assert read("parquet", zero_bytes) == [("file", None, "unreadable_file")]


def test_csv_header_only_yields_nothing(tmp_path):
    path = tmp_path / "header.csv"
    path.write_bytes(b"id,text\n")
    assert read("csv", path) == []


def test_malformed_jsonl_lines_are_counted_and_reading_goes_on(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        b'{"text": "one"}',
        b"[1, 2, 3]",
        b"42",
        b'{"body": "no text field"}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
        b'{"n": ' + b"9" * 5000 + b"}",  # more digits than Python converts
        b'{"text": "two"}',
        b'{"text": "trunc',  # the last line, cut off without its newline
    ]
    path.write_bytes(b"\n".join(lines))
    assert read("jsonl", path) == [
        ("1", "one", None),
        ("2", None, "not_an_object"),
        ("3", None, "not_an_object"),
        ("4", None, "missing_text_field"),
        ("5", None, "malformed_json"),
        ("6", None, "malformed_json"),
        ("7", "two", None),
        ("8", None, "malformed_json"),
    ]
    path.write_bytes(b'{"text": "cut"}\n{"text": "last, no newline"}')
    assert read("jsonl", path) == [("1", "cut", None), ("2", "last, no newline", None)]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_invalid_utf8_is_counted_and_later_records_are_read(tmp_path, fmt):
    path = tmp_path / "bad_bytes"
    path.write_bytes(documents(fmt, [b"good one", b"caf\xe9 \xff\xfe", b"good two"]))
    records = read(fmt, path)
    assert reasons(records) == [None, "invalid_utf8", None]
    assert [text.strip() for _, text, _ in records if text is not None] == ["good one", "good two"]


def test_invalid_utf8_in_text_line_and_file_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"good one\nbad \xc3\x28\ngood two\n")
    assert read("text", path, text_mode="line") == [
        ("1", "good one\n", None),
        ("2", None, "invalid_utf8"),
        ("3", "good two\n", None),
    ]
    assert read("text", path, text_mode="file") == [("0", None, "invalid_utf8")]


@pytest.fixture(scope="module")
def fifty_mb_line(tmp_path_factory) -> Path:
    """A jsonl file whose second line is one 50 MB document, between two small ones."""
    path = tmp_path_factory.mktemp("huge") / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"text": "before"}\n{"text": "')
        handle.write(b"word " * (FIFTY_MB // 5))
        handle.write(b'"}\n{"text": "after"}\n')
    return path


def peak_memory_of_reading(fmt: str, target: Path, **fields) -> tuple[list, int]:
    tracemalloc.start()
    try:
        records = read(fmt, target, **fields)
        return records, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fifty_mb_jsonl_line_is_dropped_without_being_held(fifty_mb_line):
    records, peak = peak_memory_of_reading("jsonl", fifty_mb_line)
    assert records == [("1", "before", None), ("2", None, "document_too_large"), ("3", "after", None)]
    assert peak < FIFTY_MB  # up to the 16 MiB default is read (and copied once), never the line
    records, peak = peak_memory_of_reading("jsonl", fifty_mb_line, max_document_bytes=1024 * 1024)
    assert reasons(records) == [None, "document_too_large", None]
    assert peak < 4 * 1024 * 1024  # memory follows the limit, not the line
    assert read("jsonl", fifty_mb_line, max_document_bytes=FIFTY_MB + 100) == [
        ("1", "before", None),
        ("2", "word " * (FIFTY_MB // 5), None),
        ("3", "after", None),
    ]


def test_fifty_mb_text_line_and_paragraph(fifty_mb_line):
    assert reasons(read("text", fifty_mb_line, text_mode="line")) == [None, "document_too_large", None]
    assert read("text", fifty_mb_line, text_mode="paragraph") == [("1", None, "document_too_large")]
    assert read("text", fifty_mb_line, text_mode="file") == [("0", None, "document_too_large")]


def test_fifty_mb_wikiextractor_body(tmp_path):
    path = tmp_path / "wiki_00"
    with open(path, "wb") as handle:
        handle.write(b'<doc id="1">\nHuge\n' + b"word " * (FIFTY_MB // 5) + b"\n</doc>\n")
        handle.write(b'<doc id="2">\nSmall\n</doc>\n')
    assert read("wikiextractor", path) == [("1", None, "document_too_large"), ("2", "Small\n", None)]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_max_document_bytes_boundary(tmp_path, fmt):
    # As read, the 20-byte documents are under the 60-byte limit in every format, the 80-byte one over.
    path = tmp_path / "sizes"
    path.write_bytes(documents(fmt, [b"x" * 20, b"y" * 80, b"z" * 20]))
    assert reasons(read(fmt, path, max_document_bytes=60)) == [None, "document_too_large", None]


def test_max_document_bytes_counts_paragraph_lines_and_utf8_bytes(tmp_path):
    text = tmp_path / "a.txt"
    text.write_bytes(b"a\n" * 30 + b"\nshort\n")
    assert read("text", text, max_document_bytes=60) == [("1", "a\n" * 30, None), ("32", "short\n", None)]
    assert reasons(read("text", text, max_document_bytes=59)) == ["document_too_large", None]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["é" * 30, "é" * 31, "ok"]}), path)  # 2 bytes a character
    assert reasons(read("parquet", path, max_document_bytes=60)) == [None, "document_too_large", None]
    jsonl = tmp_path / "escaped.jsonl"
    jsonl.write_bytes(json.dumps({"text": "é" * 40}).encode() + b"\n")  # \\u00e9 escapes: 6 bytes each
    assert reasons(read("jsonl", jsonl, max_document_bytes=100)) == ["document_too_large"]


def test_csv_field_over_the_limit_does_not_end_the_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'id,text\n1,ok\n2,"' + b"q" * 500 + b'"\n3,"also ok"\n')
    limit_before = csv.field_size_limit()
    assert read("csv", path, max_document_bytes=100) == [
        ("1", "ok", None),
        ("2", None, "document_too_large"),
        ("3", "also ok", None),
    ]
    assert csv.field_size_limit() == limit_before  # process-global: set only while a row is parsed


def test_corrupt_parquet_row_group_does_not_end_the_file(tmp_path):
    path = tmp_path / "a.parquet"
    texts = [f"document {index} " * 20 for index in range(6)]
    pq.write_table(
        pa.table({"text": texts}), path, row_group_size=2, compression="none", use_dictionary=False
    )
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset : column.data_page_offset + column.total_compressed_size] = b"\xff" * (
        column.total_compressed_size
    )
    path.write_bytes(bytes(data))
    assert read("parquet", path) == [
        ("0", texts[0], None),
        ("1", texts[1], None),
        ("2", None, "unreadable_row_group"),
        ("3", None, "unreadable_row_group"),
        ("4", texts[4], None),
        ("5", texts[5], None),
    ]


@pytest.mark.integration
def test_clean_corpus_counts_bad_files_per_reason(ray_runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = [f"Good document number {index} has enough words to keep." for index in range(3)]
    (data / "a_good.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in good))
    (data / "b_binary.jsonl").write_bytes(b"\0\x01\x02 not json \xff\n" * 100)
    (data / "c_empty.jsonl").write_bytes(b"")
    (data / "d_malformed.jsonl").write_bytes(
        b'{"text": broken\n[1, 2]\n{"body": "x"}\n{"text": "bad \xff byte"}\n'
        + json.dumps({"text": "The one good line of the malformed file."}).encode()
        + b'\n{"text": "truncated'
    )
    config = CorpusConfig(
        sources=[{"path": str(data / "*.jsonl")}], filters=[{"name": "min_length", "min_words": 3}]
    )
    stats = clean_corpus(config, None, tmp_path / "out")
    assert stats["dropped"] == {
        "binary_file": 1,
        "invalid_utf8": 1,
        "malformed_json": 2,
        "missing_text_field": 1,
        "not_an_object": 1,
    }
    assert stats["num_read"] == 10
    assert stats["num_kept"] == 4
    written = [
        row["text"]
        for path in sorted((tmp_path / "out").glob("part-*.parquet"))
        for row in pq.read_table(path).to_pylist()
    ]
    assert sorted(written) == sorted([*good, "The one good line of the malformed file."])
