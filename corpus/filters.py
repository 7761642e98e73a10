"""Document filters (datatrove style): each keeps a document, possibly trimmed, or drops it with a reason.

A filter is its own typed config: the params class registered under its YAML `name` also holds the
`apply` method, so adding a filter is one registry entry. Filters see normalized text. `apply` returns
a `FilterResult`: the text passed on (line-level filters remove lines), the drop reason or None, the
measured value behind a drop (for audits), and how many lines it removed. The published C4, Gopher
and FineWeb filters live in `c4_quality` and `gopher_quality` and register here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel
from lmforge.core.registry import Registry


@dataclass(frozen=True, slots=True)
class FilterResult:
    """One filter's verdict: `reason` None keeps `text`; `value` is what was measured against the limit."""

    text: str
    reason: str | None = None
    value: float | None = None
    lines_removed: int = 0


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    """All filters' verdict on one document; `lines_removed` is per filter, in config order;
    `filter_index` is the position of the filter that dropped it (None: kept, or empty on arrival)."""

    text: str
    reason: str | None
    value: float | None
    lines_removed: tuple[int, ...]
    filter_index: int | None = None


class DocumentFilter(StrictModel):
    """Base for filter configs; subclasses add `name: Literal[...]`, their params and `apply`."""

    name: str

    def apply(self, text: str) -> FilterResult:
        raise NotImplementedError

    def check(self, text: str) -> str | None:
        """The drop reason for `text`, or None to keep it."""
        return self.apply(text).reason


FILTERS: Registry[type[DocumentFilter]] = Registry("filter")


@FILTERS.register("min_length")
class MinLength(DocumentFilter):
    """Drops stubs, e.g. title-only Wikipedia pages."""

    name: Literal["min_length"] = "min_length"
    min_words: int = Field(default=20, ge=0)
    min_chars: int = Field(default=0, ge=0)

    def apply(self, text: str) -> FilterResult:
        num_words = len(text.split())
        if num_words < self.min_words:
            return FilterResult(text, "too_few_words", num_words)
        if len(text) < self.min_chars:
            return FilterResult(text, "too_few_chars", len(text))
        return FilterResult(text)


@FILTERS.register("max_length")
class MaxLength(DocumentFilter):
    name: Literal["max_length"] = "max_length"
    max_words: int | None = Field(default=None, ge=1)
    max_chars: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _needs_a_limit(self) -> MaxLength:
        if self.max_words is None and self.max_chars is None:
            raise ValueError("max_length needs max_words or max_chars")
        return self

    def apply(self, text: str) -> FilterResult:
        if self.max_words is not None and (num_words := len(text.split())) > self.max_words:
            return FilterResult(text, "too_many_words", num_words)
        if self.max_chars is not None and len(text) > self.max_chars:
            return FilterResult(text, "too_many_chars", len(text))
        return FilterResult(text)


@FILTERS.register("alpha_ratio")
class AlphaRatio(DocumentFilter):
    """Drops tables, code dumps and symbol soup: too few letters among the non-space characters."""

    name: Literal["alpha_ratio"] = "alpha_ratio"
    min_ratio: float = Field(default=0.5, ge=0.0, le=1.0)

    def apply(self, text: str) -> FilterResult:
        visible = [char for char in text if not char.isspace()]
        if not visible:
            return FilterResult(text, "low_alpha_ratio", 0.0)
        ratio = sum(char.isalpha() for char in visible) / len(visible)
        return FilterResult(text, "low_alpha_ratio" if ratio < self.min_ratio else None, ratio)


@FILTERS.register("repeated_lines")
class RepeatedLines(DocumentFilter):
    """Drops boilerplate-heavy pages (Gopher's duplicate-line fraction; 0.3 is Gopher's threshold)."""

    name: Literal["repeated_lines"] = "repeated_lines"
    max_fraction: float = Field(default=0.3, ge=0.0, le=1.0)

    def apply(self, text: str) -> FilterResult:
        lines = [line for line in text.split("\n") if line]
        if not lines:
            return FilterResult(text)
        fraction = (len(lines) - len(set(lines))) / len(lines)
        return FilterResult(text, "repeated_lines" if fraction > self.max_fraction else None, fraction)


def apply_filters(filters: Sequence[DocumentFilter], text: str) -> FilterOutcome:
    """Run `filters` in config order on `text`: the text left, the first drop reason and its value,
    and the lines each filter removed (counted for documents that filter passed on).

    An empty document, or one a line-level filter emptied, is dropped as `empty`.
    """
    lines_removed = [0] * len(filters)
    if not text:
        return FilterOutcome(text, "empty", None, tuple(lines_removed))
    for index, document_filter in enumerate(filters):
        result = document_filter.apply(text)
        if result.reason is not None:
            return FilterOutcome(text, result.reason, result.value, tuple(lines_removed), index)
        lines_removed[index] = result.lines_removed
        text = result.text
        if not text:
            return FilterOutcome(text, "empty", None, tuple(lines_removed), index)
    return FilterOutcome(text, None, None, tuple(lines_removed))
