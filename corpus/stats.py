"""Exact keep/drop accounting for the clean stage, overall and per source."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.core.errors import DataError, EmptyCorpusError

PROGRESS_SECONDS = 10.0
SAMPLES_PER_STEP = 3


@dataclass
class StepDrops:
    """What one step (a filter by its name, language_id, exact_dedup, ...) dropped, with the first samples."""

    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "reasons": _sorted_reasons(self.reasons), "samples": self.samples}


@dataclass
class SourceCounts:
    path: str
    num_read: int = 0
    num_kept: int = 0
    num_malformed: int = 0  # drops a reader reported (unreadable records), as opposed to filter verdicts
    dropped: Counter = field(default_factory=Counter)


class CleanStats:
    def __init__(self, source_paths: list[str], filter_names: Sequence[str] = ()) -> None:
        self.per_source = [SourceCounts(path) for path in source_paths]
        self.filter_names = list(filter_names)
        # Lines that line-level filters removed from the documents they passed on, per filter name.
        self.lines_removed: Counter = Counter()
        self.num_chars_kept = 0
        self.num_output_files = 0
        self.steps: dict[str, StepDrops] = {}
        self.pii: Counter = Counter()  # replacements per kind, in the documents written
        self.languages: Counter = Counter()  # language of the documents written (with language_id)
        self._last_log = time.monotonic()

    def count(
        self,
        source_index: int,
        reason: str | None,
        num_chars: int,
        malformed: bool = False,
        lines_removed: Sequence[int] = (),
        step: str | None = None,
        sample: dict[str, Any] | None = None,
    ) -> None:
        """Count one record; `lines_removed` is per filter, in the order of `filter_names`; a dropped
        record names the `step` that dropped it and may come with a `sample` for the report."""
        counts = self.per_source[source_index]
        for name, num_lines in zip(self.filter_names, lines_removed, strict=False):
            if num_lines:
                self.lines_removed[name] += num_lines
        counts.num_read += 1
        if reason is None:
            counts.num_kept += 1
            self.num_chars_kept += num_chars
        else:
            counts.dropped[reason] += 1
            counts.num_malformed += malformed
            if step is not None:
                drops = self.steps.setdefault(step, StepDrops())
                drops.dropped += 1
                drops.reasons[reason] += 1
                if sample is not None and len(drops.samples) < SAMPLES_PER_STEP:
                    drops.samples.append(sample)

    def merge(self, source_index: int, other: CleanStats) -> None:
        """Add `other`, the stats of one input file of source `source_index` (its only source)."""
        counts = self.per_source[source_index]
        for part in other.per_source:
            counts.num_read += part.num_read
            counts.num_kept += part.num_kept
            counts.num_malformed += part.num_malformed
            counts.dropped.update(part.dropped)
        self.lines_removed.update(other.lines_removed)
        self.num_chars_kept += other.num_chars_kept
        self.num_output_files += other.num_output_files
        self.pii.update(other.pii)
        self.languages.update(other.languages)
        for step, part_drops in other.steps.items():
            drops = self.steps.setdefault(step, StepDrops())
            drops.dropped += part_drops.dropped
            drops.reasons.update(part_drops.reasons)
            drops.samples.extend(part_drops.samples[: SAMPLES_PER_STEP - len(drops.samples)])

    @property
    def num_read(self) -> int:
        return sum(counts.num_read for counts in self.per_source)

    @property
    def num_kept(self) -> int:
        return sum(counts.num_kept for counts in self.per_source)

    def dropped(self) -> Counter:
        return sum((counts.dropped for counts in self.per_source), Counter())

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_read": self.num_read,
            "num_kept": self.num_kept,
            "num_dropped": self.num_read - self.num_kept,
            "dropped": _sorted_reasons(self.dropped()),
            "num_chars_kept": self.num_chars_kept,
            "num_output_files": self.num_output_files,
            "lines_removed": _sorted_reasons(self.lines_removed),
            "steps": {step: drops.as_dict() for step, drops in sorted(self.steps.items())},
            **({"pii_replaced": _sorted_reasons(self.pii)} if self.pii else {}),
            **({"languages_kept": _sorted_reasons(self.languages)} if self.languages else {}),
            "sources": [
                {
                    "path": counts.path,
                    "num_read": counts.num_read,
                    "num_kept": counts.num_kept,
                    "num_dropped": counts.num_read - counts.num_kept,
                    "dropped": _sorted_reasons(counts.dropped),
                }
                for counts in self.per_source
            ],
        }

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}={count}" for reason, count in self.dropped().most_common(5))
        return f"read {self.num_read}, kept {self.num_kept}" + (f" (dropped: {reasons})" if reasons else "")

    def log_progress(self, log: logging.Logger) -> None:
        if time.monotonic() - self._last_log >= PROGRESS_SECONDS:
            self._last_log = time.monotonic()
            log.info("documents read %d, kept %d", self.num_read, self.num_kept)

    def raise_if_unusable(self) -> None:
        """DataError when nothing could be read at all; EmptyCorpusError when filters removed everything."""
        num_read = self.num_read
        if num_read == 0:
            raise DataError(f"no documents were read from {', '.join(c.path for c in self.per_source)}")
        num_malformed = sum(counts.num_malformed for counts in self.per_source)
        if num_malformed == num_read:
            raise DataError(f"all {num_read} input records were malformed ({self._top_reasons()})")
        if self.num_kept == 0:
            raise EmptyCorpusError(
                f"all {num_read} documents were dropped during cleaning (top reasons: {self._top_reasons()}); "
                "loosen corpus.filters or check corpus.sources"
            )

    def _top_reasons(self) -> str:
        return ", ".join(f"{reason}={count}" for reason, count in self.dropped().most_common(3))


def _sorted_reasons(counter: Counter) -> dict[str, int]:
    return dict(sorted(counter.items()))
