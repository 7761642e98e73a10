"""Readers on tiny inputs: records, keys, and malformed records counted with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus import READERS, CorpusConfig, SourceConfig, check_inputs, list_inputs
from lmforge.corpus.inputs import InputRef, work_items

pytestmark = pytest.mark.unit


def read(fmt: str, target: Path | str, **fields) -> list[tuple[str, str | None, str | None]]:
    source = SourceConfig(path=str(target), format=fmt, **fields)
    return [tuple(record) for record in READERS.get(fmt)(str(target), source)]


def test_text_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"first para\nline two\n\n\n  \nsecond para\n\xff bad\n\nthird\n")
    assert read("text", path, text_mode="file") == [("0", None, "invalid_utf8")]
    assert read("text", path, text_mode="paragraph") == [
        ("1", "first para\nline two\n", None),
        ("6", None, "invalid_utf8"),
        ("9", "third\n", None),
    ]
    assert read("text", path, text_mode="line") == [
        ("1", "first para\n", None),
        ("2", "line two\n", None),
        ("6", "second para\n", None),
        ("7", None, "invalid_utf8"),
        ("9", "third\n", None),
    ]
    good = tmp_path / "b.txt"
    good.write_text("whole\n\nfile")
    assert read("text", good, text_mode="file") == [("0", "whole\n\nfile", None)]


def test_jsonl_counts_malformed_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"text": "good one", "id": 7}).encode(),
        b'{"text": "unterminated',
        b"",
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 12}).encode(),
        json.dumps({"text": None}).encode(),
        b'"just a string"',
        '{"text": "caf\u00e9"}'.encode("latin-1"),
        b'{"text": "lone \\ud800 surrogate"}',
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert read("jsonl", path) == [
        ("1", "good one", None),
        ("2", None, "malformed_json"),
        ("4", None, "missing_text_field"),
        ("5", None, "invalid_text_field"),
        ("6", None, "missing_text_field"),
        ("7", None, "not_an_object"),
        ("8", None, "invalid_utf8"),
        ("9", None, "invalid_utf8"),
        ("10", "good two", None),
    ]
    assert read("jsonl", path, text_field="body")[2] == ("4", "no text field", None)


def test_csv_and_tsv(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b'id,text\n1,"quoted, with comma\nand newline"\n2\n3,caf\xe9\n4,plain\n')
    assert read("csv", csv_path) == [
        ("1", "quoted, with comma\nand newline", None),
        ("2", None, "malformed_row"),
        ("3", None, "invalid_utf8"),
        ("4", "plain", None),
    ]
    tsv_path = tmp_path / "a.tsv"
    tsv_path.write_text('sentence\tlabel\nit \'s a "gem" of a film\t1\n\nbad row\n')
    assert read("tsv", tsv_path, text_field="sentence") == [
        ("1", 'it \'s a "gem" of a film', None),
        ("3", None, "malformed_row"),
    ]
    assert read("tsv", tsv_path, text_field="missing")[0] == ("1", None, "missing_text_field")


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three"], "n": [1, 2, 3]}), path)
    assert read("parquet", path) == [
        ("0", "one", None),
        ("1", None, "missing_text_field"),
        ("2", "three", None),
    ]
    assert read("parquet", path, text_field="body") == [
        (str(i), None, "missing_text_field") for i in range(3)
    ]
    assert [reason for _, _, reason in read("parquet", path, text_field="n")] == ["invalid_text_field"] * 3
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert read("parquet", broken) == [("file", None, "unreadable_file")]


def test_wikiextractor(tmp_path):
    path = tmp_path / "wiki_00"
    path.write_bytes(
        b'<doc id="12" url="?curid=12" title="Foo">\nFoo\n\nFoo is a thing.\nMore.\n</doc>\n'
        b'<doc id="13" url="?curid=13" title="Stub">\nStub\n\n\n</doc>\n'
        b'<doc id="12" url="?curid=12" title="Foo again">\nFoo again\n</doc>\n'
        b'<doc id="14" url="?curid=14" title="Bad">\nBad \xff\n</doc>\n'
        b'<doc id="15" url="?curid=15" title="Open">\nnever closed\n'
        b'<doc url="?curid=16" title="No id">\nNo id\n</doc>\n'
        b'<doc id="17" url="?curid=17" title="Truncated">\ncut'
    )
    assert read("wikiextractor", path) == [
        ("12", "Foo\n\nFoo is a thing.\nMore.\n", None),
        ("13", "Stub\n\n\n", None),
        ("12~1", "Foo again\n", None),
        ("14", None, "invalid_utf8"),
        ("15", None, "malformed_doc"),
        ("#5", "No id\n", None),
        ("17", None, "malformed_doc"),
    ]


def test_hf_reader_reads_a_local_dataset_directory(tmp_path):
    pytest.importorskip("datasets")
    dataset_dir = tmp_path / "my_dataset"
    dataset_dir.mkdir()
    rows = [{"content": "alpha"}, {"content": 3}, {"other": "x"}, {"content": "beta"}]
    (dataset_dir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = read("hf", dataset_dir, text_field="content")
    assert records == [
        ("0", "alpha", None),
        ("1", None, "invalid_text_field"),
        ("2", None, "missing_text_field"),
        ("3", "beta", None),
    ]


def test_format_inference_and_errors():
    assert SourceConfig(path="a/*.jsonl").format == "jsonl"
    assert SourceConfig(path="b.json").format == "jsonl"
    assert SourceConfig(path="c.TXT").format == "text"
    assert SourceConfig(path="hf://owner/name").format == "hf"
    assert SourceConfig(path="wiki/*", format="wikiextractor").format == "wikiextractor"
    with pytest.raises(ConfigError, match=r"sources\.0.*cannot infer the format of 'wiki/\*'"):
        validate_config(CorpusConfig, {"sources": [{"path": "wiki/*"}]})
    with pytest.raises(ConfigError, match="format must be hf"):
        validate_config(CorpusConfig, {"sources": [{"path": "hf://a/b", "format": "jsonl"}]})


def test_check_inputs_names_the_key(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    config = CorpusConfig(sources=[{"path": "a.txt"}, {"path": "missing/*.jsonl"}, {"path": "hf://o/n"}])
    with pytest.raises(ConfigError, match=r"corpus\.sources\[1\]\.path: no file matches 'missing/\*\.jsonl'"):
        check_inputs(config, tmp_path)
    local_hf = CorpusConfig(sources=[{"path": "nope", "format": "hf"}])
    with pytest.raises(ConfigError, match=r"corpus\.sources\[0\]\.path: local dataset 'nope'"):
        check_inputs(local_hf, tmp_path)
    with pytest.raises(ConfigError, match=r"corpus\.sources\[0\]\.path: relative data path"):
        check_inputs(CorpusConfig(sources=[{"path": "a.txt"}]), None)


def test_list_inputs_and_work_item_names(tmp_path):
    (tmp_path / "wiki" / "AA").mkdir(parents=True)
    for name in ("wiki_01", "wiki_00"):
        (tmp_path / "wiki" / "AA" / name).write_text("<doc>\n</doc>\n")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("{}\n")
    (tmp_path / "single.txt").write_text("x")
    config = CorpusConfig(
        sources=[
            {"path": "wiki/*/wiki_*", "format": "wikiextractor"},
            {"path": str(tmp_path / "single.txt")},
            {"path": "hf://owner/name", "hf_name": "en", "hf_split": "validation"},
            {"path": "ds", "format": "hf"},
        ]
    )
    assert list_inputs(config, tmp_path) == [
        InputRef("ds/train.jsonl", tmp_path / "ds" / "train.jsonl"),
        InputRef("single.txt", tmp_path / "single.txt"),
        InputRef("wiki/AA/wiki_00", tmp_path / "wiki" / "AA" / "wiki_00"),
        InputRef("wiki/AA/wiki_01", tmp_path / "wiki" / "AA" / "wiki_01"),
        InputRef("hf://owner/name?name=en&split=validation", None),
    ]
    assert [(item.source_index, item.name) for item in work_items(config, tmp_path)] == [
        (0, "AA/wiki_00"),
        (0, "AA/wiki_01"),
        (1, "single.txt"),
        (2, "owner/name/en/validation"),
        (3, "ds/default/train"),
    ]


def test_hf_reader_streams_only_the_first_max_documents_rows(monkeypatch):
    datasets = pytest.importorskip("datasets")
    pulled: list[int] = []
    asked: list[tuple] = []

    def rows():
        for number in range(10_000):
            pulled.append(number)
            yield {"text": f"article {number}"}

    def fake_load_dataset(name, config_name, **kwargs):
        asked.append((name, config_name, kwargs))
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    sha = "0123456789abcdef0123456789abcdef01234567"
    target = f"hf://wikimedia/wikipedia@{sha}"
    source = SourceConfig(path=target, hf_name="20231101.en", max_documents=3)
    records = list(READERS.get("hf")(target, source))
    assert records == [(str(n), f"article {n}", None) for n in range(3)]
    assert asked == [
        ("wikimedia/wikipedia", "20231101.en", {"split": "train", "streaming": True, "revision": sha})
    ]
    assert len(pulled) <= 4, "the stream (one row of read-ahead) must stop once max_documents are read"
