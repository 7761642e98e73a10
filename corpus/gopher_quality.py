"""Gopher's quality and repetition rules (Rae et al. 2021, Table A1) as datatrove 0.10.1 applies them.

Same parameters, defaults and drop reasons as datatrove's `GopherQualityFilter` and
`GopherRepetitionFilter`; a threshold set to None (or 0, as in datatrove) switches its check off.
Words are `lmforge.corpus.words.split_words` tokens, which both filters share for one text.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import accumulate
from typing import Literal

from pydantic import Field

from lmforge.corpus.filters import FILTERS, DocumentFilter, FilterResult
from lmforge.corpus.words import SYMBOL_CHARS, split_words

Fraction = float | None
DEFAULT_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")


@FILTERS.register("gopher_quality")
class GopherQuality(DocumentFilter):
    """Drops documents whose words look unlike prose: length, word length, symbols, bullets, stop words."""

    name: Literal["gopher_quality"] = "gopher_quality"
    min_doc_words: int | None = Field(default=50, ge=0)
    max_doc_words: int | None = Field(default=100000, ge=0)
    min_avg_word_length: float | None = Field(default=3, ge=0)
    max_avg_word_length: float | None = Field(default=10, ge=0)
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0)
    max_bullet_lines_ratio: Fraction = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: Fraction = Field(default=0.3, ge=0, le=1)
    # datatrove's name; it is the least fraction of words with a letter
    max_non_alpha_words_ratio: Fraction = Field(default=0.8, ge=0, le=1)
    min_stop_words: int | None = Field(default=2, ge=0)
    stop_words: tuple[str, ...] = DEFAULT_STOP_WORDS

    def apply(self, text: str) -> FilterResult:
        reason, value = self._first_failure(text)
        return FilterResult(text, reason, value)

    def _first_failure(self, text: str) -> tuple[str | None, float | None]:
        words = split_words(text)
        num_words = len(words)
        word_lengths = [len(word) for word in words if word.strip(SYMBOL_CHARS)]
        num_content_words = len(word_lengths)
        if self.min_doc_words and num_content_words < self.min_doc_words:
            return "gopher_short_doc", num_content_words
        if self.max_doc_words and num_content_words > self.max_doc_words:
            return "gopher_long_doc", num_content_words
        if num_content_words:
            mean_length = sum(word_lengths) / num_content_words
            if self.min_avg_word_length and mean_length < self.min_avg_word_length:
                return "gopher_below_avg_threshold", mean_length
            if self.max_avg_word_length and mean_length > self.max_avg_word_length:
                return "gopher_above_avg_threshold", mean_length
        if not num_words:
            return None, None  # datatrove divides by zero here; only reachable with min_doc_words off
        if self.max_symbol_word_ratio:
            if (ratio := text.count("#") / num_words) > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes", ratio
            if (ratio := (text.count("...") + text.count("…")) / num_words) > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis", ratio
        lines = text.splitlines()
        if self.max_bullet_lines_ratio:
            ratio = sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines)
            if ratio > self.max_bullet_lines_ratio:
                return "gopher_too_many_bullets", ratio
        if self.max_ellipsis_lines_ratio:
            ratio = sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines)
            if ratio > self.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis", ratio
        if self.max_non_alpha_words_ratio:
            mixed = [word for word in words if not word.isalpha()]
            num_with_letter = num_words - len(mixed) + sum(1 for word in mixed if _has_letter(word))
            ratio = num_with_letter / num_words
            if ratio < self.max_non_alpha_words_ratio:
                return "gopher_below_alpha_threshold", ratio
        if self.min_stop_words:
            num_stop_words = len(set(self.stop_words).intersection(words))
            if num_stop_words < self.min_stop_words:
                return "gopher_enough_stop_words", num_stop_words
        return None, None


def _has_letter(word: str) -> bool:
    return any(char.isalpha() for char in word)


@FILTERS.register("gopher_repetition")
class GopherRepetition(DocumentFilter):
    """Drops repetitive documents: duplicated lines and paragraphs, dominant and repeated n-grams."""

    name: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: Fraction = Field(default=0.3, ge=0, le=1)
    dup_para_frac: Fraction = Field(default=0.3, ge=0, le=1)
    dup_line_char_frac: Fraction = Field(default=0.2, ge=0, le=1)
    dup_para_char_frac: Fraction = Field(default=0.2, ge=0, le=1)
    # (n, largest character fraction of the most frequent n-gram's occurrences)
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    # (n, largest character fraction covered by repeated n-grams)
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )

    def apply(self, text: str) -> FilterResult:
        reason, value = self._first_failure(text)
        return FilterResult(text, reason, value)

    def _first_failure(self, text: str) -> tuple[str | None, float | None]:
        if not text:
            return "empty", None
        num_chars = len(text)
        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        num_duplicates, duplicate_chars = find_duplicates(paragraphs)
        if self.dup_para_frac and (ratio := num_duplicates / len(paragraphs)) > self.dup_para_frac:
            return "dup_para_frac", ratio
        if self.dup_para_char_frac and (ratio := duplicate_chars / num_chars) > self.dup_para_char_frac:
            return "dup_para_char_frac", ratio
        lines = _LINE_BREAKS.split(text)
        num_duplicates, duplicate_chars = find_duplicates(lines)
        if self.dup_line_frac and (ratio := num_duplicates / len(lines)) > self.dup_line_frac:
            return "dup_line_frac", ratio
        if self.dup_line_char_frac and (ratio := duplicate_chars / num_chars) > self.dup_line_char_frac:
            return "dup_line_char_frac", ratio
        words = split_words(text)
        for n, max_fraction in self.top_n_grams:
            if len(words) >= n and (ratio := top_n_gram_chars(words, n) / num_chars) > max_fraction:
                return f"top_{n}_gram", ratio
        ends = list(accumulate(map(len, words), initial=0))
        candidates: list[int] | None = None
        for n, max_fraction in self.dup_n_grams:
            repeated_chars, candidates = repeated_n_gram_chars(words, ends, n, candidates)
            if (ratio := repeated_chars / num_chars) > max_fraction:
                return f"duplicated_{n}_n_grams", ratio
        return None, None


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their total characters."""
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def top_n_gram_chars(words: tuple[str, ...], n: int) -> int:
    """Characters of the most frequent n-gram (joined by spaces) times its count; ties: first seen."""
    counts = Counter(zip(*(words[offset:] for offset in range(n)), strict=False))
    top, count = counts.most_common(1)[0]
    return (sum(map(len, top)) + n - 1) * count


def repeated_n_gram_chars(
    words: tuple[str, ...], ends: list[int], n: int, candidates: list[int] | None
) -> tuple[int, list[int]]:
    """Characters (words joined without spaces) of the n-grams met again in a left-to-right scan that
    jumps past each repeat, as Gopher counts them; also the start positions of n-grams occurring twice.

    An n-gram that occurs twice starts with an (n-1)-gram that occurs twice, so `candidates` from the
    previous n narrows the scan; positions outside it can neither repeat nor matter to the scan.
    """
    if candidates is None:
        starts: list[int] | range = range(len(words) - n + 1)
        keys = list(zip(*(words[offset:] for offset in range(n)), strict=False))
    else:
        starts = [start for start in candidates if start + n <= len(words)]
        keys = [words[start : start + n] for start in starts]
    counts = Counter(keys)
    if len(counts) == len(keys):
        return 0, []
    repeated = [start for start, key in zip(starts, keys, strict=True) if counts[key] > 1]
    seen: set[tuple[str, ...]] = set()
    repeated_chars, next_start = 0, 0
    for start in repeated:
        if start < next_start:
            continue
        key = words[start : start + n]
        if key in seen:
            repeated_chars += ends[start + n] - ends[start]
            next_start = start + n
        else:
            seen.add(key)
    return repeated_chars, repeated
