"""Filters keep or drop with a reason; normalization; filter config validation."""

from __future__ import annotations

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus import FILTERS, CorpusConfig
from lmforge.corpus.filters import (
    AlphaRatio,
    FilterResult,
    MaxLength,
    MinLength,
    RepeatedLines,
    apply_filters,
)
from lmforge.corpus.normalize import normalize_text
from lmforge.corpus.stats import CleanStats

pytestmark = pytest.mark.unit

TWENTY_WORDS = " ".join(f"word{i}" for i in range(20))


def test_min_length():
    assert MinLength().check(TWENTY_WORDS) is None
    assert MinLength().check("Marcus Claudius Tacitus") == "too_few_words"
    assert MinLength(min_words=0, min_chars=10).check("short") == "too_few_chars"
    assert MinLength(min_words=1, min_chars=5).check("exact") is None


def test_max_length():
    assert MaxLength(max_words=3).check("one two three") is None
    assert MaxLength(max_words=3).check("one two three four") == "too_many_words"
    assert MaxLength(max_chars=4).check("abcde") == "too_many_chars"
    with pytest.raises(ValueError, match="max_words or max_chars"):
        MaxLength()


def test_alpha_ratio():
    assert AlphaRatio(min_ratio=0.5).check("abc 12") is None  # 3 of 5 visible characters are letters
    assert AlphaRatio(min_ratio=0.7).check("abc 12") == "low_alpha_ratio"
    assert AlphaRatio().check("| 1 | 2 | 3 |") == "low_alpha_ratio"
    assert AlphaRatio().check("Ünïcödé ÄÖÜ") is None


def test_repeated_lines():
    assert RepeatedLines(max_fraction=0.3).check("a\nb\nc\nd") is None
    # 5 lines, 2 repeats: 0.4 > 0.3
    assert RepeatedLines(max_fraction=0.3).check("menu\nmenu\nmenu\nbody\nend") == "repeated_lines"
    assert RepeatedLines(max_fraction=0.5).check("menu\nmenu\nmenu\nbody\nend") is None


def test_apply_filters_runs_in_order():
    filters = [MinLength(min_words=2), AlphaRatio(min_ratio=0.9)]
    assert apply_filters(filters, "").reason == "empty"
    assert apply_filters(filters, "1").reason == "too_few_words"
    outcome = apply_filters(filters, "12 34")
    assert (outcome.reason, outcome.value, outcome.lines_removed) == ("low_alpha_ratio", 0.0, (0, 0))
    assert apply_filters(filters, "plain words").reason is None
    assert apply_filters([], "anything").reason is None


def test_document_filters_report_their_value():
    assert MinLength(min_words=3).apply("two words") == FilterResult("two words", "too_few_words", 2)
    assert MaxLength(max_chars=4).apply("abcde") == FilterResult("abcde", "too_many_chars", 5)
    assert RepeatedLines(max_fraction=0.3).apply("a\na\nb").value == 1 / 3
    assert MinLength().apply(TWENTY_WORDS) == FilterResult(TWENTY_WORDS)


def test_clean_stats_count_lines_removed_per_filter():
    stats = CleanStats(["a.txt"], ["c4_quality", "min_length", "c4_quality"])
    stats.count(0, None, 10, lines_removed=(2, 0, 1))
    stats.count(0, "too_few_words", 0, lines_removed=(3, 0, 0))
    stats.count(0, "malformed_json", 0, malformed=True)
    assert stats.as_dict()["lines_removed"] == {"c4_quality": 6}
    assert stats.as_dict()["dropped"] == {"malformed_json": 1, "too_few_words": 1}


def test_normalize_text():
    raw = "\ufeffＦｕｌｌ\u00a0width\t\ttab\r\n  line\x00 two  \r\n\n\n\n\x07third\u200b \n\n"
    assert normalize_text(raw, "NFKC") == "Full width tab\nline two\n\nthird\u200b"
    assert normalize_text("e\u0301", "NFC") == "\u00e9"
    assert normalize_text("\u00e9", "NFD") == "e\u0301"
    assert normalize_text("ﬁ", "NFC") == "ﬁ"
    assert normalize_text("ﬁ", "NFKC") == "fi"
    assert normalize_text("a\u2028b") == "a\nb"
    assert normalize_text(" \n \t\n") == ""


def test_filter_configs_from_yaml_mapping():
    config = validate_config(
        CorpusConfig,
        {
            "sources": [{"path": "x.txt"}],
            "filters": [
                {"name": "max_length", "max_chars": 100},
                {"name": "repeated_lines", "max_fraction": 0.2},
            ],
        },
    )
    assert config.filters == [MaxLength(max_chars=100), RepeatedLines(max_fraction=0.2)]
    default = CorpusConfig(sources=[{"path": "x.txt"}])
    assert default.filters == [MinLength(min_words=20)]
    assert default.model_dump()["filters"] == [{"name": "min_length", "min_words": 20, "min_chars": 0}]
    assert set(FILTERS.names()) == {
        "min_length",
        "max_length",
        "alpha_ratio",
        "repeated_lines",
        "c4_quality",
        "fineweb_quality",
        "gopher_quality",
        "gopher_repetition",
    }


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            [{"name": "min_lenght"}],
            r"filters\.0\.name: unknown filter 'min_lenght'; did you mean 'min_length'",
        ),
        ([{"min_words": 3}], r"filters\.0: missing key 'name'"),
        (
            [{"name": "min_length"}, {"name": "max_length", "max_wordz": 3}],
            r"filters\.1: unknown key 'max_wordz' for filter 'max_length'; did you mean 'max_words'",
        ),
        ([{"name": "min_length", "min_words": -1}], r"filters\.0\.min_words: Input should be greater than"),
        ([{"name": "alpha_ratio", "min_ratio": 2}], r"filters\.0\.min_ratio"),
        ([{"name": "max_length"}], r"filters\.0: .*max_length needs max_words or max_chars"),
    ],
)
def test_filter_config_errors_name_the_key(filters, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(CorpusConfig, {"sources": [{"path": "x.txt"}], "filters": filters}, source="corpus")


def test_other_config_errors():
    with pytest.raises(ConfigError, match=r"unknown key 'sources\.0\.fromat'; did you mean 'format'"):
        validate_config(CorpusConfig, {"sources": [{"path": "x.txt", "fromat": "text"}]})
    with pytest.raises(ConfigError, match=r"sources: List should have at least 1 item"):
        validate_config(CorpusConfig, {"sources": []})
    with pytest.raises(ConfigError, match=r"normalization"):
        validate_config(CorpusConfig, {"sources": [{"path": "x.txt"}], "normalization": "NFX"})
