"""The published filters (C4, Gopher quality and repetition, FineWeb) against hand-computed limits.

Each check gets a document just inside and one just outside its threshold; the expected values are
worked out in the comments. Thresholds other than the one under test are switched off (None), as
datatrove allows, so each case exercises one rule.
"""

from __future__ import annotations

import random
from itertools import accumulate

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus import CorpusConfig
from lmforge.corpus.c4_quality import C4Quality, FineWebQuality
from lmforge.corpus.filters import apply_filters
from lmforge.corpus.gopher_quality import GopherQuality, GopherRepetition, repeated_n_gram_chars
from lmforge.corpus.words import count_sentences, split_words

pytestmark = pytest.mark.unit

QUALITY_OFF = dict(
    min_doc_words=None,
    max_doc_words=None,
    min_avg_word_length=None,
    max_avg_word_length=None,
    max_symbol_word_ratio=None,
    max_bullet_lines_ratio=None,
    max_ellipsis_lines_ratio=None,
    max_non_alpha_words_ratio=None,
    min_stop_words=None,
)
REPETITION_OFF = dict(
    dup_line_frac=None,
    dup_para_frac=None,
    dup_line_char_frac=None,
    dup_para_char_frac=None,
    top_n_grams=(),
    dup_n_grams=(),
)


def words(n: int) -> str:
    """n words of mean length 4.5 with two stop words ("the", "with")."""
    return " ".join((["the", "house", "with", "garden"] * (n // 4 + 1))[:n])


def quality(text: str, **limits) -> tuple[str | None, float | None]:
    result = GopherQuality(**{**QUALITY_OFF, **limits}).apply(text)
    return result.reason, result.value


def repetition(text: str, **limits) -> tuple[str | None, float | None]:
    result = GopherRepetition(**{**REPETITION_OFF, **limits}).apply(text)
    return result.reason, result.value


def test_words_follow_the_english_rule_tokenizer():
    assert split_words("Don't stop-me now, U.S. (ok).") == (
        "Do", "n't", "stop", "-", "me", "now", ",", "U.S.", "(", "ok", ")", ".",
    )  # fmt: skip
    assert split_words("$35 for 10km... Mr. Smith's 1990-91 e-mail") == (
        "$", "35", "for", "10", "km", "...", "Mr.", "Smith", "'s", "1990", "-", "91", "e", "-", "mail",
    )  # fmt: skip
    assert split_words("see www.example.com/a-b and end.The") == (
        "see", "www.example.com/a-b", "and", "end", ".", "The",
    )  # fmt: skip


def test_sentences_follow_the_rule_sentencizer():
    assert count_sentences("One line without an end") == 1
    assert count_sentences("It works. Mr. Smith agrees! Yes") == 3
    assert count_sentences("In Jan. 2005 it rained (a lot).") == 1  # Jan. is an abbreviation
    assert count_sentences('He said "stop." Then he left.') == 2  # the quote stays with its sentence
    assert count_sentences("Version 3.5 shipped.") == 1


def test_gopher_word_count_bounds():
    assert quality(words(50), min_doc_words=50) == (None, None)
    # symbol-only tokens are not words: 49 words and a full stop are 49
    assert quality(words(49) + " .", min_doc_words=50) == ("gopher_short_doc", 49)
    assert quality(words(60), max_doc_words=60) == (None, None)
    assert quality(words(61), max_doc_words=60) == ("gopher_long_doc", 61)


def test_gopher_mean_word_length():
    even = " ".join(["the", "and"] * 25)  # 50 words of 3 characters: mean 3.0
    assert quality(even, min_avg_word_length=3) == (None, None)
    # one "and" shortened to "an": 149 characters over 50 words
    assert quality(even[:-1], min_avg_word_length=3) == ("gopher_below_avg_threshold", 149 / 50)
    long_words = " ".join(["abcdefghij"] * 9 + ["abcdefghijk"])  # mean 101 / 10
    assert quality(long_words, max_avg_word_length=10.1) == (None, None)
    assert quality(long_words, max_avg_word_length=10) == ("gopher_above_avg_threshold", 10.1)


def test_gopher_hash_and_ellipsis_ratios():
    # "#" and "..." standalone are one token each: k of them among 50 words is k / (50 + k)
    assert quality(words(50) + " #" * 5, max_symbol_word_ratio=0.1) == (None, None)
    assert quality(words(50) + " #" * 6, max_symbol_word_ratio=0.1) == ("gopher_too_many_hashes", 6 / 56)
    assert quality(words(50) + " ..." * 5, max_symbol_word_ratio=0.1) == (None, None)
    assert quality(words(50) + " …" * 6, max_symbol_word_ratio=0.1) == ("gopher_too_many_ellipsis", 6 / 56)


def test_gopher_bullet_and_ellipsis_lines():
    bullets = ["- the house", "• the house"] * 5  # 10 bullet lines
    assert quality("\n".join(["a plain line", *bullets[:9]]), max_bullet_lines_ratio=0.9) == (None, None)
    assert quality("\n".join(["a plain line", *bullets]), max_bullet_lines_ratio=0.9) == (
        "gopher_too_many_bullets",
        10 / 11,
    )
    lines = ["the house stands ..."] * 3 + ["the house stands"] * 7  # 3 of 10 end with an ellipsis
    assert quality("\n".join(lines), max_ellipsis_lines_ratio=0.3) == (None, None)
    lines[3] = "the house stands …"
    assert quality("\n".join(lines), max_ellipsis_lines_ratio=0.3) == ("gopher_too_many_end_ellipsis", 0.4)


def test_gopher_alphabetic_words_and_stop_words():
    # 80 words with a letter ("h2o" has one) and 20 without: 0.8 is enough
    text = " ".join(["the"] * 79 + ["h2o"] + ["1999"] * 20)
    assert quality(text, max_non_alpha_words_ratio=0.8) == (None, None)
    assert quality(text + " ,", max_non_alpha_words_ratio=0.8) == ("gopher_below_alpha_threshold", 80 / 101)
    assert quality("the house with a garden", min_stop_words=2) == (None, None)
    # stop words match case-sensitively: "The" is not "the"
    assert quality("The house with a garden", min_stop_words=2) == ("gopher_enough_stop_words", 1)


def test_gopher_duplicate_paragraphs_and_lines():
    paragraphs = [f"paragraph {i}" for i in range(7)]
    text = "\n\n".join(paragraphs + paragraphs[:3])  # 3 repeats in 10 paragraphs
    assert repetition(text, dup_para_frac=0.3) == (None, None)
    assert repetition(text + "\n\nparagraph 3", dup_para_frac=0.3) == ("dup_para_frac", 4 / 11)
    # A (10 chars) + B + A joined by "\n\n": 10 duplicated characters over 24 + len(B)
    assert repetition("\n\n".join(["a" * 10, "b" * 26, "a" * 10]), dup_para_char_frac=0.2) == (None, None)
    assert repetition("\n\n".join(["a" * 10, "b" * 25, "a" * 10]), dup_para_char_frac=0.2) == (
        "dup_para_char_frac",
        10 / 49,
    )
    lines = [f"line {i}" for i in range(7)]
    assert repetition("\n".join(lines + lines[:3]), dup_line_frac=0.3) == (None, None)
    assert repetition("\n".join(lines + lines[:4]), dup_line_frac=0.3) == ("dup_line_frac", 4 / 11)
    # with "\n": 10 duplicated characters over 22 + len(B)
    assert repetition("\n".join(["a" * 10, "b" * 28, "a" * 10]), dup_line_char_frac=0.2) == (None, None)
    assert repetition("\n".join(["a" * 10, "b" * 27, "a" * 10]), dup_line_char_frac=0.2) == (
        "dup_line_char_frac",
        10 / 49,
    )


def test_gopher_top_n_gram_fraction():
    # "aa bb" twice: 5 characters x 2 over 12 + n characters of text
    assert repetition(f"aa bb {'x' * 38} aa bb", top_n_grams=((2, 0.2),)) == (None, None)
    assert repetition(f"aa bb {'x' * 37} aa bb", top_n_grams=((2, 0.2),)) == ("top_2_gram", 10 / 49)
    # ties go to the n-gram seen first: "a b" (3 x 2 / 27), not "cccc dddd" (9 x 2 / 27)
    assert repetition("a b a b cccc dddd cccc dddd", top_n_grams=((2, 0.3),)) == (None, None)
    assert repetition("a b a b cccc dddd cccc dddd", top_n_grams=((2, 0.2),)) == ("top_2_gram", 6 / 27)


def test_gopher_duplicated_n_gram_fraction():
    # "a b c d e" twice: 5 characters (joined without spaces) over 20 + n characters of text
    assert repetition(f"a b c d e {'x' * 14} a b c d e", dup_n_grams=((5, 0.15),)) == (None, None)
    assert repetition(f"a b c d e {'x' * 13} a b c d e", dup_n_grams=((5, 0.15),)) == (
        "duplicated_5_n_grams",
        5 / 33,
    )
    # the scan jumps past a repeat: ten "a" hold one repeated 5-gram (5 characters), not five
    assert repetition(" ".join("a" * 10), dup_n_grams=((5, 0.3),)) == (None, None)
    assert repetition(" ".join("a" * 10), dup_n_grams=((5, 0.25),)) == ("duplicated_5_n_grams", 5 / 19)


def _reference_repeated_chars(tokens: list[str], n: int) -> int:
    seen, repeated, index = set(), 0, 0
    while index < len(tokens) - n + 1:
        key = tuple(tokens[index : index + n])
        if key in seen:
            repeated += sum(map(len, key))
            index += n
        else:
            seen.add(key)
            index += 1
    return repeated


def test_repeated_n_grams_match_the_plain_scan_on_random_text():
    rng = random.Random(0)
    for _ in range(200):
        tokens = tuple(rng.choice(["a", "bb", "ccc", "d"]) for _ in range(rng.randint(0, 60)))
        ends = list(accumulate(map(len, tokens), initial=0))
        candidates = None
        for n in range(5, 11):
            chars, candidates = repeated_n_gram_chars(tokens, ends, n, candidates)
            assert chars == _reference_repeated_chars(list(tokens), n), (tokens, n)


def test_c4_removes_lines_and_counts_them():
    text = "\n".join(
        [
            "A heading without a full stop",
            "Too short.",
            "Please enable JavaScript in your browser.",
            "We use cookies to improve this site.",
            "The first sentence is here.[1] The second one follows.",
            "Mr. Smith wrote a third sentence [citation needed].",
            "He said it was fine!",
            "It trails off...",
            'Then came the "fifth one."',
        ]
    )
    result = C4Quality().apply(text)
    assert result.reason is None
    assert result.lines_removed == 5
    assert result.text == "\n".join(
        [
            "The first sentence is here. The second one follows.",
            "Mr. Smith wrote a third sentence .",
            "He said it was fine!",
            'Then came the "fifth one."',
        ]
    )


def test_c4_sentence_minimum_and_document_drops():
    five = "One is here. Two is here.\nThree is here! Four is here?\nFive is here."
    assert C4Quality().apply(five).reason is None
    four = five.replace("Four is here? ", "").replace("Four is here?", "")
    assert C4Quality().apply(four).reason == "too_few_sentences"
    assert C4Quality().apply(four).value == 4
    assert C4Quality(min_num_sentences=4).apply(four).reason is None
    assert C4Quality().apply(five + "\nLorem ipsum dolor sit amet.").reason == "lorem_ipsum"
    assert C4Quality().apply(five + "\nThe code is {x} here.").reason == "curly_bracket"
    # a line needs three words, counted before citations are removed: "Big [1] [2]." has three
    assert C4Quality(min_num_sentences=1).apply("Big [1] [2].").text == "Big  ."
    assert C4Quality(min_num_sentences=1).apply("Big [1].").reason == "too_few_sentences"
    long_word = "x" * 1000
    assert C4Quality(min_num_sentences=1).apply(f"A {long_word} word.").reason is None
    assert C4Quality(min_num_sentences=1).apply(f"A {long_word}x word.").reason == "too_few_sentences"


def test_fineweb_line_rules():
    lines = [f"line number {i} has several distinct words here" for i in range(25)]
    punctuated = [line + "." if i < 3 else line for i, line in enumerate(lines)]  # 3 of 25 = 0.12
    assert FineWebQuality().apply("\n".join(punctuated)).reason is None
    assert FineWebQuality().apply(
        "\n".join(punctuated[1:] + ["one more line without a stop here"])
    ).value == (2 / 25)
    assert FineWebQuality().apply("\n".join(lines)).reason == "line_punct_ratio"
    assert FineWebQuality(line_punct_exclude_zero=True).apply("\n".join(lines)).reason is None
    short = ["Short line one here.", "Short line two here.", "Short line three here."]
    long = "This line is long enough to not count as short."
    assert FineWebQuality().apply("\n".join([*short[:2], long])).reason is None  # 2/3 <= 0.67
    result = FineWebQuality().apply("\n".join([*short, long]))
    assert (result.reason, result.value) == ("short_line_ratio", 0.75)


def test_fineweb_duplicate_characters_and_list_ratio():
    a = "A line of exactly forty characters here."
    assert len(a) == 40
    # 40 duplicated characters over 80 + len(B) (newlines do not count)
    text = "\n".join([a, "b" * 119 + ".", a])
    assert FineWebQuality(char_duplicates_ratio=0.2).apply(text).reason is None
    result = FineWebQuality(char_duplicates_ratio=0.2).apply("\n".join([a, "b" * 118 + ".", a]))
    assert (result.reason, result.value) == ("char_dup_ratio", 40 / 199)
    word = "abcdefghijklmnop"  # two of them make a 33-character line
    lines = [f"{word} {word} {word}", f"{word} {word} {word}x", f"{word} {word}y", f"{word} {word}z"]
    # 3 line breaks over 10 words is 0.3, over 9 words is 1/3
    assert FineWebQuality(line_punct_thr=0).apply("\n".join(lines)).reason is None
    lines[1] = f"{word} {word}x"
    result = FineWebQuality(line_punct_thr=0).apply("\n".join(lines))
    assert (result.reason, result.value) == ("list_ratio", 3 / 9)


def test_apply_filters_passes_trimmed_text_on_and_reports_the_drop():
    text = "No full stop here\nThe house is big. The garden is green. It has trees.\nIt is old. It is nice."
    filters = [C4Quality(), GopherQuality(min_doc_words=20)]
    outcome = apply_filters(filters, text)
    assert outcome.reason == "gopher_short_doc"
    assert outcome.value == 17  # counted on the trimmed text: the heading line is gone
    assert outcome.lines_removed == (1, 0)
    kept = apply_filters([C4Quality()], text)
    assert (kept.reason, kept.lines_removed) == (None, (1,))
    assert kept.text == text.split("\n", 1)[1]
    assert apply_filters([C4Quality(min_num_sentences=-1)], "no stop").reason == "empty"


def test_quality_filter_config():
    config = validate_config(
        CorpusConfig,
        {
            "sources": [{"path": "x.txt"}],
            "filters": [
                {"name": "gopher_repetition", "top_n_grams": [[2, 0.25]], "dup_line_frac": None},
                {"name": "gopher_quality", "min_doc_words": 30},
                {"name": "c4_quality", "min_num_sentences": 3},
                {"name": "fineweb_quality"},
            ],
        },
    )
    assert config.filters[0] == GopherRepetition(top_n_grams=((2, 0.25),), dup_line_frac=None)
    assert config.filters[1].min_doc_words == 30 and config.filters[1].max_doc_words == 100000
    assert config.filters[2] == C4Quality(min_num_sentences=3)
    assert config.filters[3] == FineWebQuality()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"name": "gopher_quality", "min_doc_word": 3},
            r"unknown key 'min_doc_word' for filter 'gopher_quality'; did you mean 'min_doc_words'",
        ),
        (
            {"name": "gopher_repetiton"},
            r"unknown filter 'gopher_repetiton'; did you mean 'gopher_repetition'",
        ),
        ({"name": "gopher_repetition", "dup_line_frac": 1.5}, r"filters\.0\.dup_line_frac"),
        ({"name": "c4_quality", "min_num_sentences": -2}, r"filters\.0\.min_num_sentences"),
        ({"name": "fineweb_quality", "short_line_thr": -0.1}, r"filters\.0\.short_line_thr"),
    ],
)
def test_quality_filter_config_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(CorpusConfig, {"sources": [{"path": "x.txt"}], "filters": [item]}, source="corpus")
