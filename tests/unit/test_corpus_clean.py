"""clean_corpus end to end on local Ray: exact counts, dedup, caps, errors, byte-identical output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import ArtifactError, DataError, EmptyCorpusError
from lmforge.corpus import CorpusConfig, clean_corpus

pytestmark = pytest.mark.integration

LONG = "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn, then rests."


def read_output(output_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(output_dir.glob("part-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def write_jsonl(path: Path, rows: list) -> None:
    path.write_bytes(
        b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)
    )


@pytest.fixture
def mixed_inputs(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(
        data / "a.jsonl",
        [
            {"text": LONG},
            {"text": "too short"},
            b'{"text": broken',
            b'{"text": "bad \xff bytes"}',
            {
                "text": "  " + LONG.replace(" ", "   ") + "\n\n\n"
            },  # duplicate of the first after normalization
            {"text": LONG + " Different ending."},
        ],
    )
    (data / "b.txt").write_text(f"{LONG}\n\n{LONG} Another one.\n\n{'x ' * 30}\n")
    return data


def test_each_filter_reason_is_counted(ray_runtime, tmp_path):
    paragraphs = [
        LONG,
        "| 1990 | 12 | 7 |\n| 1991 | 30 | 4 |",  # a table: few letters
        "Home\nHome\nHome\nContact\nHome",  # boilerplate lines
        LONG + " " + LONG,  # 36 words
        "Stub title",
    ]
    (tmp_path / "in.txt").write_text("\n\n".join(paragraphs) + "\n")
    config = CorpusConfig(
        sources=[{"path": str(tmp_path / "in.txt")}],
        filters=[
            {"name": "min_length", "min_words": 3},
            {"name": "max_length", "max_words": 30},
            {"name": "alpha_ratio", "min_ratio": 0.6},
            {"name": "repeated_lines", "max_fraction": 0.3},
        ],
    )
    stats = clean_corpus(config, None, tmp_path / "out")
    assert stats["dropped"] == {
        "low_alpha_ratio": 1,
        "repeated_lines": 1,
        "too_few_words": 1,
        "too_many_words": 1,
    }
    assert [row["text"] for row in read_output(tmp_path / "out")] == [LONG]


def test_line_filters_trim_documents_and_count_lines(ray_runtime, tmp_path):
    body = "One is here. Two is here.\nThree is here! Four is here?\nFive is here."
    rows = [
        {"text": "Menu\nHome page\n" + body},  # two lines without a full stop go
        {"text": body + "\nLorem ipsum dolor sit amet."},  # placeholder text: dropped whole
        {"text": "Short.\n" + body.replace("Five is here.", "")},  # four sentences
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    config = CorpusConfig(
        sources=[{"path": str(tmp_path / "in.jsonl")}],
        filters=[{"name": "min_length", "min_words": 3}, {"name": "c4_quality"}],
    )
    stats = clean_corpus(config, None, tmp_path / "out")
    assert [row["text"] for row in read_output(tmp_path / "out")] == [body]
    assert stats["dropped"] == {"lorem_ipsum": 1, "too_few_sentences": 1}
    assert stats["lines_removed"] == {"c4_quality": 2}


def test_counts_are_exact(ray_runtime, mixed_inputs, tmp_path):
    config = CorpusConfig(
        sources=[{"path": "*.jsonl"}, {"path": "b.txt"}], filters=[{"name": "min_length", "min_words": 10}]
    )
    stats = clean_corpus(config, mixed_inputs, tmp_path / "out")
    rows = read_output(tmp_path / "out")
    # a.jsonl: line 1 kept, 2 short, 3 malformed, 4 invalid utf-8, 5 duplicate of 1, 6 kept.
    # b.txt: paragraph 1 duplicate of a.jsonl line 1, paragraph 3 kept, paragraph 5 ("x x ...") kept.
    assert [row["doc_id"] for row in rows] == ["0/a.jsonl/1", "0/a.jsonl/6", "1/b.txt/3", "1/b.txt/5"]
    assert stats["dropped"] == {"duplicate": 2, "invalid_utf8": 1, "malformed_json": 1, "too_few_words": 1}
    assert (stats["num_read"], stats["num_kept"], stats["num_dropped"]) == (9, 4, 5)
    assert stats["num_chars_kept"] == sum(len(row["text"]) for row in rows)
    assert stats["num_output_files"] == 2  # one per input file with kept documents
    assert stats["sources"][0] == {
        "path": "*.jsonl",
        "num_read": 6,
        "num_kept": 2,
        "num_dropped": 4,
        "dropped": {"duplicate": 1, "invalid_utf8": 1, "malformed_json": 1, "too_few_words": 1},
    }
    assert stats["sources"][1]["dropped"] == {"duplicate": 1}

    no_dedup = clean_corpus(config.model_copy(update={"dedup": False}), mixed_inputs, tmp_path / "no_dedup")
    assert no_dedup["num_kept"] == 6 and "duplicate" not in no_dedup["dropped"]


def test_filters_run_on_normalized_text(ray_runtime, tmp_path):
    (tmp_path / "in.txt").write_text("ab\x00cd\n\nfull\u3000width   ｆｏｏ\n")
    config = CorpusConfig(
        sources=[{"path": str(tmp_path / "in.txt")}], filters=[{"name": "min_length", "min_words": 2}]
    )
    stats = clean_corpus(config, None, tmp_path / "out")
    assert [row["text"] for row in read_output(tmp_path / "out")] == ["full width foo"]
    assert stats["dropped"] == {"too_few_words": 1}


def test_rows_per_file_and_determinism(ray_runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for file_index in range(3):
        write_jsonl(
            data / f"part{file_index}.jsonl",
            [{"text": f"{LONG} file {file_index} doc {i}"} for i in range(7)],
        )
    config = CorpusConfig(sources=[{"path": "part*.jsonl"}], filters=[], rows_per_file=5)
    first = clean_corpus(config, data, tmp_path / "run1")
    second = clean_corpus(config, data, tmp_path / "run2")
    assert first == second
    names = sorted(path.name for path in (tmp_path / "run1").iterdir())
    # Each input file's documents go to files of their own, at most rows_per_file rows each.
    assert names == [f"part-{item:05d}-{chunk:04d}.parquet" for item in range(3) for chunk in range(2)]
    for name in names:
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes()
    doc_ids = [row["doc_id"] for row in read_output(tmp_path / "run1")]
    assert doc_ids == [f"0/part{f}.jsonl/{line}" for f in range(3) for line in range(1, 8)]


def test_document_caps(ray_runtime, tmp_path):
    for name in ("a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name} {i} {LONG}"} for i in range(10)])
    per_source = CorpusConfig(
        sources=[
            {"path": str(tmp_path / "a.jsonl"), "max_documents": 3},
            {"path": str(tmp_path / "b.jsonl")},
        ],
        filters=[],
    )
    stats = clean_corpus(per_source, None, tmp_path / "out1")
    assert [source["num_read"] for source in stats["sources"]] == [3, 10]
    total = per_source.model_copy(update={"max_documents": 5})
    stats = clean_corpus(total, None, tmp_path / "out2")
    assert [source["num_read"] for source in stats["sources"]] == [3, 2]
    assert [row["doc_id"].split("/", 1)[1] for row in read_output(tmp_path / "out2")] == [
        "a.jsonl/1",
        "a.jsonl/2",
        "a.jsonl/3",
        "b.jsonl/1",
        "b.jsonl/2",
    ]


def test_empty_corpus_and_all_malformed(ray_runtime, tmp_path):
    (tmp_path / "short.txt").write_text("tiny\n\nalso tiny\n")
    config = CorpusConfig(sources=[{"path": str(tmp_path / "short.txt")}])
    with pytest.raises(EmptyCorpusError, match=r"all 2 documents were dropped .*too_few_words=2"):
        clean_corpus(config, None, tmp_path / "out1")
    assert not list((tmp_path / "out1").glob("*.parquet"))

    write_jsonl(tmp_path / "bad.jsonl", [b"{nope", b'{"other": 1}'])
    config = CorpusConfig(sources=[{"path": str(tmp_path / "bad.jsonl")}])
    with pytest.raises(DataError, match=r"all 2 input records were malformed") as caught:
        clean_corpus(config, None, tmp_path / "out2")
    assert not isinstance(caught.value, EmptyCorpusError)


def test_refuses_a_used_output_dir(ray_runtime, tmp_path):
    (tmp_path / "in.txt").write_text(LONG)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"old")
    config = CorpusConfig(sources=[{"path": str(tmp_path / "in.txt")}], filters=[])
    with pytest.raises(ArtifactError, match="already holds part"):
        clean_corpus(config, None, tmp_path / "out")


def test_real_wikiextractor_file_drops_title_only_stubs(ray_runtime, shared_data_dir, tmp_path):
    config = CorpusConfig(sources=[{"path": "enwiki_extract/wiki_00.txt", "format": "wikiextractor"}])
    stats = clean_corpus(config, shared_data_dir, tmp_path / "out")
    # Independent parse of the same file: body = everything between the <doc> line and </doc>.
    raw = (shared_data_dir / "enwiki_extract" / "wiki_00.txt").read_text(encoding="utf-8")
    docs = re.findall(r'<doc id="(\d+)"[^>]*>\n(.*?)</doc>', raw, flags=re.S)
    assert len(docs) == 1530  # per the data folder's SOURCE.md
    title_only = {doc_id for doc_id, body in docs if len(body.strip().split("\n")) == 1}
    short = {doc_id for doc_id, body in docs if len(body.split()) < 20}
    assert title_only and title_only <= short
    kept_ids = {row["doc_id"].rsplit("/", 1)[1] for row in read_output(tmp_path / "out")}
    assert not kept_ids & title_only
    assert stats["num_read"] == 1530
    assert stats["dropped"]["too_few_words"] == len(short)
    assert stats["num_kept"] == 1530 - len(short) - stats["dropped"].get("duplicate", 0)
    assert all(
        doc_id.startswith("0/wiki_00.txt/")
        for doc_id in (row["doc_id"] for row in read_output(tmp_path / "out"))
    )
