"""The clean stage's curation steps end to end on local Ray: language ID, PII, decontamination,
near dedup, the rejected-documents sink, the per-step report, and output independent of worker count."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.corpus import CorpusConfig, clean_corpus

pytestmark = pytest.mark.integration

WORDS = (
    "the river city market people school water house history music garden winter summer church "
    "station railway village council family children teacher doctor library museum bridge castle "
    "island mountain forest harbour factory company company's season league player coach award "
    "album record single film novel author poet painter science language country government army"
).split()
EVAL_SENTENCE = "a gripping and deeply moving portrait of a family that refuses to give up on its dreams"
GERMAN = (
    "Die Stadt liegt am Ufer des Flusses und ist bekannt für ihre alte Brücke, die im Mittelalter "
    "gebaut wurde. Viele Menschen besuchen jedes Jahr den Markt auf dem großen Platz vor der Kirche."
)


def english(seed: int, num_words: int = 120) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < num_words:
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def edited(text: str, num_edits: int, seed: int) -> str:
    words = text.split()
    rng = random.Random(seed)
    for position in rng.sample(range(len(words)), num_edits):
        words[position] = "zebra"
    return " ".join(words)


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))


def read_rows(directory: Path, pattern: str = "part-*.parquet") -> list[dict]:
    return [row for path in sorted(directory.glob(pattern)) for row in pq.read_table(path).to_pylist()]


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    base = english(1, 200)
    write_jsonl(
        data / "a.jsonl",
        [
            base,
            GERMAN,
            english(2) + " Write to jane.doe@example.com or call (415) 555-0123 for tickets.",
            english(3) + " Critics called it " + EVAL_SENTENCE + ".",
        ],
    )
    write_jsonl(data / "b.jsonl", [english(4), base, edited(base, 2, seed=7), english(5)])
    (data / "dev.tsv").write_text(f"sentence\tlabel\n{EVAL_SENTENCE}\t1\nshort one\t0\n")
    return data


def curation_config(**overrides) -> CorpusConfig:
    raw = {
        "sources": [{"path": "*.jsonl"}],
        "filters": [{"name": "min_length", "min_words": 10}],
        "language_id": {"languages": ["en"], "min_score": 0.5},
        "pii": {},
        "decontamination": {
            "eval_sets": [{"name": "sst2_dev", "path": "dev.tsv", "format": "tsv", "columns": ["sentence"]}],
            "drop": True,
        },
        "near_dedup": {},
        "rejected_documents": True,
        **overrides,
    }
    return CorpusConfig.model_validate(raw)


def test_every_curation_step_drops_redacts_and_reports(ray_runtime, corpus_dir, tmp_path):
    out = tmp_path / "out"
    stats = clean_corpus(curation_config(), corpus_dir, out)
    rows = read_rows(out)
    assert [row["doc_id"] for row in rows] == ["0/a.jsonl/1", "0/a.jsonl/3", "0/b.jsonl/1", "0/b.jsonl/4"]
    assert stats["dropped"] == {"contaminated": 1, "duplicate": 1, "language": 1, "near_duplicate": 1}
    assert set(stats["steps"]) == {"decontamination", "exact_dedup", "language_id", "near_dedup"}
    language = stats["steps"]["language_id"]
    assert language["dropped"] == 1 and language["samples"][0]["doc_id"] == "0/a.jsonl/2"
    assert language["samples"][0]["text"].startswith("Die Stadt")
    # PII: placeholders in the text, counted per kind.
    redacted = rows[1]["text"]
    assert "<EMAIL>" in redacted and "<PHONE>" in redacted and "example.com" not in redacted
    assert stats["pii_replaced"] == {"email": 1, "ip_address": 0, "phone": 1}
    # Language columns in the output.
    assert {row["language"] for row in rows} == {"en"} and all(row["language_score"] >= 0.5 for row in rows)
    assert stats["languages_kept"] == {"en": 4}
    # Decontamination report: the one long dev sentence matched; the short one is too short to check.
    report = stats["decontamination"]["sst2_dev"]
    assert report["num_contaminated_documents"] == 1
    assert report["num_contaminated_examples"] == 1 and report["num_examples_too_short"] == 1
    # Near dedup: the edited copy of the first document, in another file, is dropped; the first kept.
    assert stats["near_dedup"]["num_dropped"] == 1
    assert stats["near_dedup"]["cluster_size_histogram"]["2"] == 1
    assert stats["exact_dedup"] == {"enabled": True, "num_dropped": 1}
    # The audit sink holds every dropped document with its step, reason and value.
    rejected = read_rows(out / "rejected")
    assert sorted((row["doc_id"], row["step"], row["reason"]) for row in rejected) == [
        ("0/a.jsonl/2", "language_id", "language"),
        ("0/a.jsonl/4", "decontamination", "contaminated"),
        ("0/b.jsonl/2", "exact_dedup", "duplicate"),
        ("0/b.jsonl/3", "near_dedup", "near_duplicate"),
    ]
    german = next(row for row in rejected if row["step"] == "language_id")
    assert german["text"] == GERMAN and german["language"] == "de" and german["value"] is not None


def test_decontamination_reports_without_dropping(ray_runtime, corpus_dir, tmp_path):
    config = curation_config(
        decontamination={
            "eval_sets": [{"name": "sst2_dev", "path": "dev.tsv", "format": "tsv", "columns": ["sentence"]}],
        },
        near_dedup=None,
        rejected_documents=False,
    )
    stats = clean_corpus(config, corpus_dir, tmp_path / "out")
    assert "contaminated" not in stats["dropped"]
    assert stats["decontamination"]["sst2_dev"]["num_contaminated_documents"] == 1
    assert not (tmp_path / "out" / "rejected").exists()


def test_output_is_the_same_for_any_number_of_workers(ray_runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    documents = [english(seed, 150) for seed in range(12)]
    # Copies and near copies spread over files, so each cluster spans files.
    for file_index in range(5):
        texts = [documents[(file_index * 3 + i) % 12] for i in range(4)]
        texts.append(edited(documents[file_index], 1, seed=file_index))
        write_jsonl(data / f"f{file_index}.jsonl", texts)
    (data / "f9-empty.jsonl").write_bytes(b"")
    outputs = []
    for num_workers in (1, 2, 3):
        config = curation_config(
            decontamination=None, num_workers=num_workers, rows_per_file=2, language_id=None
        )
        out = tmp_path / f"out{num_workers}"
        stats = clean_corpus(config, data, out)
        files = {
            path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*.parquet"))
        }
        outputs.append((json.dumps(stats, sort_keys=True), files))
    assert outputs[0][0] == outputs[1][0] == outputs[2][0]
    assert outputs[0][1] == outputs[1][1] == outputs[2][1]
    stats = json.loads(outputs[0][0])
    # 20 copies of 12 documents, and a near copy of each of documents 0-4: each distinct one kept once.
    assert stats["num_kept"] == 12
    assert stats["dropped"] == {"duplicate": 8, "near_duplicate": 5}


def test_caps_apply_before_dedup(ray_runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    first, second = english(1), english(2)
    write_jsonl(data / "a.jsonl", [first, second])
    write_jsonl(data / "b.jsonl", [first, english(3)])
    config = CorpusConfig(sources=[{"path": "*.jsonl"}], filters=[], max_documents=3)
    stats = clean_corpus(config, data, tmp_path / "out")
    # Three records count: a/1, a/2, b/1 (a copy of a/1); b/2 is past the cap.
    assert (stats["num_read"], stats["num_kept"], stats["dropped"]) == (3, 2, {"duplicate": 1})
    assert [row["doc_id"] for row in read_rows(tmp_path / "out")] == ["0/a.jsonl/1", "0/a.jsonl/2"]


def test_a_source_cap_decides_which_copy_is_kept(ray_runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    first, second = english(1, 150), english(2, 150)
    write_jsonl(data / "a.jsonl", [first, second])
    write_jsonl(data / "b.jsonl", [second, edited(second, 2, seed=3)])
    config = CorpusConfig(
        sources=[{"path": "a.jsonl", "max_documents": 1}, {"path": "b.jsonl"}],
        filters=[],
        near_dedup={},
    )
    stats = clean_corpus(config, data, tmp_path / "out")
    # a.jsonl's copy of `second` is past its source's cap: b.jsonl's is the first one inside the caps,
    # so it is kept and only its edited copy goes, as a near duplicate.
    assert [row["doc_id"] for row in read_rows(tmp_path / "out")] == ["0/a.jsonl/1", "1/b.jsonl/1"]
    assert stats["exact_dedup"]["num_dropped"] == 0
    assert stats["near_dedup"]["num_dropped"] == 1
    histogram = stats["near_dedup"]["cluster_size_histogram"]
    assert histogram == {"1": 1, "2": 1}
    assert (
        sum(int(size) * count for size, count in histogram.items())
        == stats["near_dedup"]["num_documents"]
        == 3
    )


def test_decontamination_counts_only_documents_inside_the_caps(ray_runtime, corpus_dir, tmp_path):
    # a.jsonl's 4th document holds the eval sentence; a cap of 3 leaves it unread.
    config = curation_config(sources=[{"path": "a.jsonl"}], max_documents=3, near_dedup=None)
    stats = clean_corpus(config, corpus_dir, tmp_path / "out")
    report = stats["decontamination"]["sst2_dev"]
    # Checked: the two English documents that passed the filters (the German one is dropped before).
    assert (report["num_documents_checked"], report["num_contaminated_documents"]) == (2, 0)
    assert stats["num_read"] == 3
