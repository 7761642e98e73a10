"""Decontamination: n-gram overlap between training documents and evaluation data sets.

Words: the text NFKC-normalized and lowercased, then every maximal run of Unicode letters and digits
(`[^\\W_]+`); everything else (punctuation, `_`, whitespace) only separates words, so "don't" is
`don t` and WikiText's "1 @,@ 000" is `1 000`, like "1,000". An n-gram is n consecutive words within
one text column of one example (never across columns). Its hash is a polynomial over the words'
xxh3-64 hashes, sum of h(w_j) * M^(n-1-j) mod 2^64, so numpy rolls it over a document in n vector
steps instead of hashing every window's string. Following GPT-3 (Brown et al. 2020, appendix C), an eval example shorter than n words is one
gram of its whole length if it has at least `min_words` words, and is left out (counted as too short)
otherwise. A training document matches an example when it contains any of the example's grams.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import xxhash
from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel, operational
from lmforge.core.errors import DataError
from lmforge.infra.data_paths import HF_PREFIX, is_hf_uri, parse_hf_uri, resolve_file

WORD = re.compile(r"[^\W_]+")
TABULAR_FORMATS = ("jsonl", "csv", "tsv", "parquet")
NUM_SAMPLE_IDS = 10
EVAL_SPLIT = "validation"  # a hub eval set's split when its URI names none
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so no word's hash is lost to overflow


class EvalSetConfig(StrictModel):
    """One evaluation data set: `path` is a file (absolute or relative to the data directory) or a hub
    split, `hf://owner/name?config=..&split=..` (format `hf`; the split defaults to validation).

    `columns` names the text fields of a tabular file or hub split (each checked on its own); plain
    text has one example per line (`text_mode: line`) or per blank-line-separated paragraph. `hub` is
    a hub split read instead when `path` finds nothing locally (with `hub_columns`, default
    `columns`, or `text` for plain text); it is swapped in before any stage runs, so the recipe
    holds the data set that was read.
    """

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    format: Literal["text", "jsonl", "csv", "tsv", "parquet", "hf"]
    columns: list[str] | None = Field(default=None, min_length=1)
    text_mode: Literal["line", "paragraph"] = "line"
    hub: str | None = operational(None)
    hub_columns: list[str] | None = operational(None)

    @model_validator(mode="after")
    def _columns_match_format(self) -> EvalSetConfig:
        if self.format in (*TABULAR_FORMATS, "hf") and self.columns is None:
            raise ValueError(f"eval set {self.name!r}: format {self.format} needs columns (the text fields)")
        if self.format == "text" and self.columns is not None:
            raise ValueError(f"eval set {self.name!r}: plain text has no columns; remove columns")
        if (self.format == "hf") != is_hf_uri(self.path):
            raise ValueError(
                f"eval set {self.name!r}: a hub split (hf://...) has format hf, a file another format; "
                f"got path {self.path!r} with format {self.format}"
            )
        if self.hub is not None and not is_hf_uri(self.hub):
            raise ValueError(
                f"eval set {self.name!r}: hub names a hub split (hf://owner/name?...), got {self.hub!r}"
            )
        return self

    def hub_eval_set(self) -> EvalSetConfig | None:
        """The eval set to read instead when `path` finds nothing locally (None: no fallback)."""
        if self.hub is None:
            return None
        columns = self.hub_columns or self.columns or ["text"]
        return EvalSetConfig(name=self.name, path=self.hub, format="hf", columns=columns)


class DecontamConfig(StrictModel):
    """Check training documents against `eval_sets`; with `drop`, contaminated documents are dropped."""

    n: int = Field(default=13, ge=1)
    min_words: int = Field(default=8, ge=1)
    eval_sets: list[EvalSetConfig] = Field(min_length=1)
    drop: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DecontamConfig:
        if self.min_words > self.n:
            raise ValueError(f"min_words ({self.min_words}) must not exceed n ({self.n})")
        names = [eval_set.name for eval_set in self.eval_sets]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"eval set names must be unique; repeated: {', '.join(duplicated)}")
        return self


def normalized_words(text: str) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text).lower())


def window_hashes(words: list[str], lengths: set[int]) -> dict[int, np.ndarray]:
    """The hash of every window of `words` of each length in `lengths` (uint64, in window order)."""
    hashes = np.fromiter(
        (xxhash.xxh3_64_intdigest(word.encode("utf-8", "surrogatepass")) for word in words),
        dtype=np.uint64,
        count=len(words),
    )
    windows: dict[int, np.ndarray] = {}
    rolling = hashes
    for length in range(1, max(lengths, default=0) + 1):
        if length > 1:  # windows of `length` from those of length - 1 (uint64 arithmetic wraps)
            rolling = rolling[:-1] * _MULTIPLIER + hashes[length - 1 :]
        if length in lengths:
            windows[length] = rolling
    return windows


@dataclass
class EvalSetIndex:
    name: str
    example_ids: list[str]  # position = the example's index in the postings
    num_too_short: int = 0


@dataclass
class DecontamIndex:
    """Gram hash -> (eval set index, example index) postings for every eval set, built once."""

    n: int
    eval_sets: list[EvalSetIndex] = field(default_factory=list)
    postings: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    gram_lengths: set[int] = field(default_factory=set)  # n, and the lengths of shorter whole examples

    _sorted_keys: np.ndarray | None = field(
        default=None, repr=False, compare=False
    )  # the postings' keys, for vectorized membership tests

    def add_example(self, set_index: int, example_id: str, texts: list[str], min_words: int) -> bool:
        """Index one example's grams; False (and nothing indexed) when every text is below min_words."""
        grams: set[int] = set()
        for text in texts:
            words = normalized_words(text)
            length = min(len(words), self.n)
            if length >= min_words:
                self.gram_lengths.add(length)
                grams.update(window_hashes(words, {length})[length].tolist())
        if not grams:
            return False
        eval_set = self.eval_sets[set_index]
        posting = (set_index, len(eval_set.example_ids))
        eval_set.example_ids.append(example_id)
        for gram in grams:
            self.postings.setdefault(gram, []).append(posting)
        self._sorted_keys = None
        return True

    def check(self, text: str) -> dict[str, set[str]]:
        """The ids of the examples per eval set that share a gram with `text` (sets with none left out)."""
        if self._sorted_keys is None:
            self._sorted_keys = np.array(sorted(self.postings), dtype=np.uint64)
        keys = self._sorted_keys
        found: set[tuple[int, int]] = set()
        for grams in window_hashes(normalized_words(text), self.gram_lengths).values():
            if not len(grams) or not len(keys):
                continue
            positions = np.minimum(np.searchsorted(keys, grams), len(keys) - 1)
            for gram in np.unique(grams[keys[positions] == grams]).tolist():
                found.update(self.postings[gram])
        matches: dict[str, set[str]] = {}
        for set_index, example_index in found:
            eval_set = self.eval_sets[set_index]
            matches.setdefault(eval_set.name, set()).add(eval_set.example_ids[example_index])
        return matches


def read_examples(eval_set: EvalSetConfig, data_dir: Path | None, key: str) -> dict[str, list[str]]:
    """Example id -> its texts (one per column), in file order; unreadable records are skipped."""
    # Imported here: the corpus config imports this module for DecontamConfig.
    from lmforge.corpus import hf_reader  # noqa: F401  (registers the hf reader)
    from lmforge.corpus.config import SourceConfig
    from lmforge.corpus.readers import READERS

    read = READERS.get(eval_set.format)
    examples: dict[str, list[str]] = {}
    for column in eval_set.columns or ["text"]:
        if eval_set.format == "hf":
            hub = parse_hf_uri(eval_set.path, key, None, EVAL_SPLIT)
            target = f"{HF_PREFIX}{hub.dataset}" + (f"@{hub.revision}" if hub.revision else "")
            source = SourceConfig(
                path=target, format="hf", text_field=column, hf_name=hub.config, hf_split=hub.split
            )
        else:
            file = resolve_file(eval_set.path, data_dir, key)
            source = SourceConfig(
                path=str(file), format=eval_set.format, text_field=column, text_mode=eval_set.text_mode
            )
            target = str(file)
        for record in read(target, source):
            # Blank rows (a hub text split's empty lines) are not examples, as the local reader skips them.
            if record.text is not None and record.text.strip():
                examples.setdefault(record.key, []).append(record.text)
    if not examples:
        raise DataError(f"{key}: {eval_set.path} holds no readable example with columns {eval_set.columns}")
    return examples


def build_index(config: DecontamConfig, data_dir: Path | None) -> DecontamIndex:
    """Read every eval set once and index its grams."""
    index = DecontamIndex(n=config.n)
    for set_index, eval_set in enumerate(config.eval_sets):
        index.eval_sets.append(EvalSetIndex(eval_set.name, []))
        examples = read_examples(eval_set, data_dir, f"corpus.decontamination.eval_sets[{set_index}].path")
        for example_id, texts in examples.items():
            if not index.add_example(set_index, example_id, texts, config.min_words):
                index.eval_sets[set_index].num_too_short += 1
    return index


@dataclass
class DecontamReport:
    """Per eval set: contaminated training documents and examples. Merge the reports of workers."""

    num_documents: int = 0
    contaminated_documents: dict[str, int] = field(default_factory=dict)
    contaminated_examples: dict[str, set[str]] = field(default_factory=dict)

    def add(self, matches: dict[str, set[str]]) -> None:
        """Count one checked training document with its `DecontamIndex.check` result."""
        self.num_documents += 1
        for name, example_ids in matches.items():
            self.contaminated_documents[name] = self.contaminated_documents.get(name, 0) + 1
            self.contaminated_examples.setdefault(name, set()).update(example_ids)

    def merge(self, other: DecontamReport) -> None:
        self.num_documents += other.num_documents
        for name, count in other.contaminated_documents.items():
            self.contaminated_documents[name] = self.contaminated_documents.get(name, 0) + count
        for name, example_ids in other.contaminated_examples.items():
            self.contaminated_examples.setdefault(name, set()).update(example_ids)

    def summary(self, index: DecontamIndex) -> dict[str, dict[str, object]]:
        """Per eval set, JSON-able; sample ids are the first in file order, so any split agrees."""
        rows: dict[str, dict[str, object]] = {}
        for eval_set in index.eval_sets:
            num_examples = len(eval_set.example_ids)
            contaminated = self.contaminated_examples.get(eval_set.name, set())
            num_documents = self.contaminated_documents.get(eval_set.name, 0)
            rows[eval_set.name] = {
                "num_documents_checked": self.num_documents,
                "num_contaminated_documents": num_documents,
                "contaminated_document_fraction": num_documents / self.num_documents
                if self.num_documents
                else 0.0,
                "num_examples": num_examples,
                "num_examples_too_short": eval_set.num_too_short,
                "num_contaminated_examples": len(contaminated),
                "contaminated_example_fraction": len(contaminated) / num_examples if num_examples else 0.0,
                "sample_example_ids": [i for i in eval_set.example_ids if i in contaminated][:NUM_SAMPLE_IDS],
            }
        return rows
