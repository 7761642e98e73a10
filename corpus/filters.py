"""Document filters (datatrove style): each returns None to keep a document or a drop reason.

A filter is its own typed config: the params class registered under its YAML `name` also holds the
`check` method, so adding a filter is one registry entry. Filters see normalized text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel
from lmforge.core.registry import Registry


class DocumentFilter(StrictModel):
    """Base for filter configs; subclasses add `name: Literal[...]`, their params and `check`."""

    name: str

    def check(self, text: str) -> str | None:
        raise NotImplementedError


FILTERS: Registry[type[DocumentFilter]] = Registry("filter")


@FILTERS.register("min_length")
class MinLength(DocumentFilter):
    """Drops stubs, e.g. title-only Wikipedia pages."""

    name: Literal["min_length"] = "min_length"
    min_words: int = Field(default=20, ge=0)
    min_chars: int = Field(default=0, ge=0)

    def check(self, text: str) -> str | None:
        if len(text.split()) < self.min_words:
            return "too_few_words"
        if len(text) < self.min_chars:
            return "too_few_chars"
        return None


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

    def check(self, text: str) -> str | None:
        if self.max_words is not None and len(text.split()) > self.max_words:
            return "too_many_words"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_many_chars"
        return None


@FILTERS.register("alpha_ratio")
class AlphaRatio(DocumentFilter):
    """Drops tables, code dumps and symbol soup: too few letters among the non-space characters."""

    name: Literal["alpha_ratio"] = "alpha_ratio"
    min_ratio: float = Field(default=0.5, ge=0.0, le=1.0)

    def check(self, text: str) -> str | None:
        visible = [char for char in text if not char.isspace()]
        if not visible:
            return "low_alpha_ratio"
        num_alpha = sum(char.isalpha() for char in visible)
        return "low_alpha_ratio" if num_alpha / len(visible) < self.min_ratio else None


@FILTERS.register("repeated_lines")
class RepeatedLines(DocumentFilter):
    """Drops boilerplate-heavy pages (Gopher's duplicate-line fraction; 0.3 is Gopher's threshold)."""

    name: Literal["repeated_lines"] = "repeated_lines"
    max_fraction: float = Field(default=0.3, ge=0.0, le=1.0)

    def check(self, text: str) -> str | None:
        lines = [line for line in text.split("\n") if line]
        if not lines:
            return None
        num_repeated = len(lines) - len(set(lines))
        return "repeated_lines" if num_repeated / len(lines) > self.max_fraction else None


def first_drop_reason(filters: Sequence[DocumentFilter], text: str) -> str | None:
    """The reason of the first filter that rejects `text` (filters run in config order), else None."""
    if not text:
        return "empty"
    for document_filter in filters:
        reason = document_filter.check(text)
        if reason is not None:
            return reason
    return None
