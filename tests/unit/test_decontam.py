"""Decontamination: word normalization, n-gram and whole-example matches, reports, config checks."""

from __future__ import annotations

import json

import pytest
import xxhash

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus.decontam import (
    DecontamConfig,
    DecontamReport,
    build_index,
    normalized_words,
    window_hashes,
)

pytestmark = pytest.mark.unit


def test_normalized_words():
    assert normalized_words("Don't STOP—the 1,000 café's!") == "don t stop the 1 000 café s".split()
    assert normalized_words("ﬁne Ｆｕｌｌ snake_case e\u0301") == ["fine", "full", "snake", "case", "é"]
    assert normalized_words("well @-@ known 1 @,@ 000") == normalized_words("well-known 1,000")
    assert normalized_words("") == [] and normalized_words(" ... \r\n") == []


def test_window_hashes_match_the_polynomial():
    words = ["the", "café", "1", "the", "café", "1", "x"]
    windows = window_hashes(words, {1, 3, 7, 8})
    word_hash = [xxhash.xxh3_64_intdigest(word.encode()) for word in words]
    multiplier = 0x9E3779B97F4A7C15
    for length in (1, 3, 7):
        expected = [
            sum(h * multiplier ** (length - 1 - j) for j, h in enumerate(word_hash[i : i + length])) % 2**64
            for i in range(len(words) - length + 1)
        ]
        assert windows[length].tolist() == expected
    assert windows[3][0] == windows[3][3] and windows[3][0] != windows[3][1]
    assert len(windows[8]) == 0
    assert len(window_hashes([], {13})[13]) == 0


@pytest.fixture
def eval_dir(tmp_path):
    (tmp_path / "dev.tsv").write_text(
        "sentence\tlabel\n"
        "it 's a charming and often affecting journey . \t1\n"  # 8 words: one whole-example gram at n=13
        "too short \t0\n"  # 2 words: below min_words
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen \t1\n"
    )
    rows = [
        {
            "question": "alpha beta gamma delta epsilon zeta eta theta",
            "context": "iota kappa lambda mu nu xi omicron pi",
        },
        {"question": "unrelated words only here", "context": "nothing to see"},
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "valid.txt").write_bytes(
        b" \r\n = Title = \r\n \r\n Homarus gammarus , known as the European lobster or common lobster , is a species . \r\n"
    )
    return tmp_path


def config(**changes):
    raw = {
        "eval_sets": [
            {"name": "sst2", "path": "dev.tsv", "format": "tsv", "columns": ["sentence"]},
            {"name": "qa", "path": "qa.jsonl", "format": "jsonl", "columns": ["question", "context"]},
            {"name": "wiki", "path": "valid.txt", "format": "text"},
        ]
    }
    return validate_config(DecontamConfig, {**raw, **changes})


def test_index_counts_examples_and_short_ones(eval_dir):
    index = build_index(config(), eval_dir)
    summary = {eval_set.name: (eval_set.example_ids, eval_set.num_too_short) for eval_set in index.eval_sets}
    # TSV ids are data-row numbers, text ids line numbers; "= Title =" (1 word) is too short.
    assert summary == {"sst2": (["1", "3"], 1), "qa": (["1"], 1), "wiki": (["4"], 1)}
    assert index.gram_lengths == {8, 13}


def test_ngram_matches(eval_dir):
    index = build_index(config(), eval_dir)
    # 13 consecutive words of a 14-word example match; 12 do not.
    assert index.check("x one two three four five six seven eight nine ten eleven twelve thirteen y") == {
        "sst2": {"3"}
    }
    assert index.check("one two three four five six seven eight nine ten eleven twelve") == {}
    # Case, punctuation and spacing do not matter; the whole 8-word example is found inside a sentence.
    assert index.check("Critics: It's a CHARMING and often-affecting journey!") == {"sst2": {"1"}}
    assert index.check("It's a charming and often affecting") == {}
    wiki = "Homarus gammarus, known as the European lobster or common lobster, is a species"
    assert index.check(f"{wiki} of lobster.") == {"wiki": {"4"}}
    assert index.check(wiki.removesuffix(" species")) == {}
    assert index.check("") == {} and index.check("日本語のテキスト") == {}


def test_columns_are_checked_apart(eval_dir):
    index = build_index(config(), eval_dir)
    assert index.check("see: alpha beta gamma delta epsilon zeta eta theta.") == {"qa": {"1"}}
    assert index.check("iota kappa lambda mu nu xi omicron pi") == {"qa": {"1"}}
    # The end of the question followed by the start of the context is not one of the example's grams.
    assert index.check("eta theta iota kappa lambda mu nu xi") == {}


def test_smaller_n_and_min_words(eval_dir):
    index = build_index(config(n=3, min_words=2), eval_dir)
    assert index.eval_sets[0].num_too_short == 0
    assert index.check("this is too short indeed") == {"sst2": {"2"}}
    assert index.check("european lobster or") == {"wiki": {"4"}}


def test_report_counts_and_merges(eval_dir):
    index = build_index(config(), eval_dir)
    documents = [
        "it's a charming and often affecting journey; alpha beta gamma delta epsilon zeta eta theta",
        "nothing here",
        "one two three four five six seven eight nine ten eleven twelve thirteen",
        "It's a charming and often affecting journey.",
    ]
    whole = DecontamReport()
    for document in documents:
        whole.add(index.check(document))
    first, second = DecontamReport(), DecontamReport()
    for document in documents[:2]:
        first.add(index.check(document))
    for document in documents[2:]:
        second.add(index.check(document))
    second.merge(first)
    assert second.summary(index) == whole.summary(index)
    summary = whole.summary(index)
    assert summary["sst2"] == {
        "num_documents_checked": 4,
        "num_contaminated_documents": 3,
        "contaminated_document_fraction": 0.75,
        "num_examples": 2,
        "num_examples_too_short": 1,
        "num_contaminated_examples": 2,
        "contaminated_example_fraction": 1.0,
        "sample_example_ids": ["1", "3"],
    }
    assert summary["qa"]["num_contaminated_documents"] == 1
    assert summary["wiki"]["num_contaminated_documents"] == 0
    assert summary["wiki"]["contaminated_example_fraction"] == 0.0


def test_real_eval_sets(shared_data_dir):
    real = {
        "eval_sets": [
            {"name": "sst2", "path": "sst2/dev.tsv", "format": "tsv", "columns": ["sentence"]},
            {"name": "wikitext2", "path": "wikitext2_raw/valid.txt", "format": "text"},
        ]
    }
    index = build_index(validate_config(DecontamConfig, real), shared_data_dir)
    counts = {e.name: len(e.example_ids) + e.num_too_short for e in index.eval_sets}
    assert counts["sst2"] == 872  # every dev sentence is read
    assert index.check("It's a charming and often affecting journey.") == {"sst2": {"1"}}
    assert "4" in index.check(
        "Homarus gammarus, known as the European lobster or common lobster, is a species of clawed lobster"
    ).get("wikitext2", set())


def test_config_validation(eval_dir):
    with pytest.raises(ConfigError, match="needs columns"):
        validate_config(DecontamConfig, {"eval_sets": [{"name": "a", "path": "dev.tsv", "format": "tsv"}]})
    with pytest.raises(ConfigError, match="has no columns"):
        config(eval_sets=[{"name": "a", "path": "v.txt", "format": "text", "columns": ["text"]}])
    with pytest.raises(ConfigError, match="must not exceed n"):
        config(n=5, min_words=8)
    with pytest.raises(ConfigError, match="repeated: a"):
        config(eval_sets=[{"name": "a", "path": "v.txt", "format": "text"}] * 2)
    with pytest.raises(ConfigError, match="eval_sets"):
        validate_config(DecontamConfig, {"eval_sets": []})
    with pytest.raises(ConfigError, match="did you mean 'columns'"):
        config(eval_sets=[{"name": "a", "path": "q.jsonl", "format": "jsonl", "column": ["q"]}])
    with pytest.raises(ConfigError, match=r"decontamination.eval_sets\[0\].path"):
        build_index(config(eval_sets=[{"name": "a", "path": "missing.txt", "format": "text"}]), eval_dir)
