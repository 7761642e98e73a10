"""C4's line rules (Raffel et al. 2020) and FineWeb's extra rules, as datatrove 0.10.1 applies them.

Same parameters, defaults and drop reasons as datatrove's `C4QualityFilter` (lines split on line
breaks, as published) and `FineWebQualityFilter`. C4 removes lines and counts them; sentences are
counted only until `min_num_sentences` is reached, which is all the decision needs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from lmforge.corpus.filters import FILTERS, DocumentFilter, FilterResult
from lmforge.corpus.gopher_quality import find_duplicates
from lmforge.corpus.words import TERMINAL_PUNCTUATION, count_sentences, split_words

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


@FILTERS.register("c4_quality")
class C4Quality(DocumentFilter):
    """Keeps only lines that read like sentences; drops pages with code, placeholder text or few sentences.

    A limit of -1 switches its check off, as in datatrove.
    """

    name: Literal["c4_quality"] = "c4_quality"
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(default=5, ge=-1)
    min_words_per_line: int = Field(default=3, ge=-1)
    max_word_length: int = Field(default=1000, ge=-1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def apply(self, text: str) -> FilterResult:
        lines = text.splitlines()
        kept: list[str] = []
        num_sentences = 0
        for raw_line in lines:
            line = raw_line.strip()
            words = line.split()
            too_long = self.max_word_length != -1 and len(line) > self.max_word_length
            if too_long and any(len(word) > self.max_word_length for word in words):
                continue
            if self.remove_citations and "[" in line:
                line = CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(words) < self.min_words_per_line:
                continue
            lowered = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lowered:
                return FilterResult(text, "lorem_ipsum")
            if self.filter_javascript and "javascript" in lowered:
                continue
            if self.filter_curly_bracket and "{" in line:
                return FilterResult(text, "curly_bracket")
            if self.filter_policy and any(phrase in lowered for phrase in POLICY_PHRASES):
                continue
            if num_sentences < self.min_num_sentences:
                num_sentences += count_sentences(line)
            kept.append(line)
        if num_sentences < self.min_num_sentences:
            return FilterResult(text, "too_few_sentences", num_sentences)
        return FilterResult("\n".join(kept).strip(), lines_removed=len(lines) - len(kept))


@FILTERS.register("fineweb_quality")
class FineWebQuality(DocumentFilter):
    """Drops pages of unpunctuated or short lines, duplicated lines, or list-like layout (FineWeb)."""

    name: Literal["fineweb_quality"] = "fineweb_quality"
    line_punct_thr: float = Field(default=0.12, ge=0, le=1)
    line_punct_exclude_zero: bool = False
    short_line_thr: float = Field(default=0.67, ge=0, le=1)
    short_line_length: int = Field(default=30, ge=0)
    char_duplicates_ratio: float = Field(default=0.01, ge=0, le=1)
    new_line_ratio: float = Field(default=0.3, ge=0)

    def apply(self, text: str) -> FilterResult:
        reason, value = self._first_failure(text)
        return FilterResult(text, reason, value)

    def _first_failure(self, text: str) -> tuple[str | None, float | None]:
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty", None
        ratio = sum(1 for line in lines if line and line[-1] in TERMINAL_PUNCTUATION) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return "line_punct_ratio", ratio
        ratio = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        if ratio > self.short_line_thr:
            return "short_line_ratio", ratio
        ratio = find_duplicates(lines)[1] / (len(text) - text.count("\n"))
        if ratio > self.char_duplicates_ratio:
            return "char_dup_ratio", ratio
        ratio = text.count("\n") / len(split_words(text))
        if ratio > self.new_line_ratio:
            return "list_ratio", ratio
        return None, None
