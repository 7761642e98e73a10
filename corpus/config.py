"""Typed config of the corpus (clean) stage: where documents come from and what survives."""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from lmforge.core.configbase import StrictModel, operational

# Importing the published filters registers them in FILTERS before the config union is built.
from lmforge.corpus import c4_quality, gopher_quality  # noqa: F401
from lmforge.corpus.decontam import DecontamConfig
from lmforge.corpus.filters import FILTERS, DocumentFilter, MinLength
from lmforge.corpus.langid import LanguageIdConfig
from lmforge.corpus.normalize import NormalizationForm
from lmforge.corpus.pii import PiiConfig
from lmforge.infra.data_paths import is_hf_uri

Format = Literal["auto", "text", "jsonl", "parquet", "csv", "tsv", "wikiextractor", "hf"]
EXTENSION_FORMATS = {
    ".txt": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
}


def infer_format(path: str) -> str | None:
    """The reader format implied by `path` (hf:// prefix or file extension), or None."""
    if is_hf_uri(path):
        return "hf"
    return EXTENSION_FORMATS.get(PurePosixPath(path).suffix.lower())


class HubSourceConfig(StrictModel):
    """A hub data set that a source reads instead when its local path finds nothing."""

    path: str = Field(min_length=1)  # hf://owner/name[@revision]
    hf_name: str | None = None  # the data set's config, e.g. 20231101.en
    hf_split: str = "train"
    text_field: str = "text"
    # Hub sources are streamed: only the rows read are downloaded, even from a multi-GB dump.
    max_documents: int | None = Field(default=None, ge=1)

    @field_validator("path")
    @classmethod
    def _names_a_hub_data_set(cls, path: str) -> str:
        if not is_hf_uri(path):
            raise ValueError(f"a hub fallback names a hub data set (hf://owner/name), got {path!r}")
        return path


class SourceConfig(StrictModel):
    """One input: a file, a glob, a local dataset directory (format hf) or `hf://owner/name`.

    `hf_name` is the hub data set's config (`20231101.en`), `hf_split` its split. `hf://` sources are
    streamed, so with `max_documents` only the first N rows are downloaded, even from a large dump.
    `hub` is read instead when `path` finds nothing locally (no data directory, or no match), e.g.
    `{path: "hf://wikimedia/wikipedia", hf_name: 20231101.en, max_documents: 1000}`.
    """

    path: str = Field(min_length=1)
    format: Format = "auto"
    text_field: str = "text"
    text_mode: Literal["file", "line", "paragraph"] = "paragraph"
    hf_name: str | None = None
    hf_split: str = "train"
    max_documents: int | None = Field(default=None, ge=1)
    # A document whose raw bytes exceed this is dropped as document_too_large without being decoded,
    # so one runaway line (a dump with no newlines) cannot exhaust a worker's memory. None: no limit.
    max_document_bytes: int | None = Field(default=16 * 1024 * 1024, ge=1)
    # Swapped in for the whole source before any stage runs, so the recipe holds the source that
    # was read (the hub one, pinned to a commit), never this field itself.
    hub: HubSourceConfig | None = operational(None)

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_format(cls, raw: Any) -> Any:
        # Resolved here so the saved config says which reader ran.
        if not isinstance(raw, dict) or raw.get("format", "auto") != "auto" or "path" not in raw:
            return raw
        inferred = infer_format(str(raw["path"]))
        if inferred is None:
            raise ValueError(
                f"cannot infer the format of {raw['path']!r} from its extension "
                f"(known: {', '.join(EXTENSION_FORMATS)}, hf://); set format "
                "(WikiExtractor output needs format: wikiextractor)"
            )
        return {**raw, "format": inferred}

    @model_validator(mode="after")
    def _hf_uri_needs_hf_format(self) -> SourceConfig:
        if is_hf_uri(self.path) and self.format != "hf":
            raise ValueError(
                f"path {self.path!r} is a Hugging Face dataset; format must be hf, not {self.format}"
            )
        if is_hf_uri(self.path) and self.hub is not None:
            raise ValueError(
                f"hub: path {self.path!r} is a hub data set already; a fallback is for local paths"
            )
        return self

    def hub_source(self) -> SourceConfig | None:
        """The source to read instead of this one when its path finds nothing (None: no fallback)."""
        if self.hub is None:
            return None
        return SourceConfig(format="hf", **self.hub.model_dump())


def _filter_tag(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return FILTERS.get(str(name)).__name__ if name in FILTERS else None


# Tags are class names: lmforge.core.configbase drops capitalised union tags from error locations, so an
# error reads `filters.0.min_words`, not `filters.0.min_length.min_words`. The union is built from the
# registry at import time, which type checkers cannot follow.
if TYPE_CHECKING:
    FilterConfig = DocumentFilter
else:
    FilterConfig = Annotated[
        Union[tuple(Annotated[cls, Tag(cls.__name__)] for _, cls in FILTERS.items())],  # noqa: UP007
        Discriminator(_filter_tag),
    ]


def _default_filters() -> list[FilterConfig]:
    return [MinLength(min_words=20)]


class NearDedupConfig(StrictModel):
    """MinHash LSH near-duplicate removal (lmforge.corpus.near_dedup).

    Defaults are datatrove's published ones: 5-word shingles, 14 bands x 8 rows = 112 permutations,
    which pairs documents whose shingle Jaccard similarity is above about (1/14)^(1/8) = 0.72.
    """

    shingle_unit: Literal["word", "char"] = "word"
    shingle_size: int = Field(default=5, ge=1)
    num_perm: int = Field(default=112, ge=1)
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1)
    seed: int = Field(default=1, ge=0)
    # Band records (16 bytes each) one pair-finding task holds at once: the memory bound of that
    # phase. The result does not depend on it.
    max_records_in_memory: int = operational(4_000_000, ge=1)

    @model_validator(mode="after")
    def _bands_cover_the_permutations(self) -> NearDedupConfig:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"bands x rows must equal num_perm: {self.bands} x {self.rows} = "
                f"{self.bands * self.rows}, num_perm is {self.num_perm}; set num_perm: "
                f"{self.bands * self.rows} or change bands/rows"
            )
        return self


class CorpusConfig(StrictModel):
    """The clean stage. Per document, in this order: read, normalize, `language_id`, `filters` (in
    config order), `decontamination`, `pii` redaction; then exact `dedup` and `near_dedup` over the
    documents left. Each of the optional steps is off when its key is absent.
    """

    sources: list[SourceConfig] = Field(min_length=1)
    normalization: NormalizationForm = "NFKC"
    language_id: LanguageIdConfig | None = None
    filters: list[FilterConfig] = Field(default_factory=_default_filters)
    decontamination: DecontamConfig | None = None
    pii: PiiConfig | None = None
    dedup: bool = True
    # Off by default; runs after exact dedup, over the documents it kept.
    near_dedup: NearDedupConfig | None = None
    # Write every dropped document (with its reason, the step that dropped it and the measured value)
    # to rejected/part-NNNNN.parquet inside the artifact, for audits.
    rejected_documents: bool = False
    max_documents: int | None = Field(default=None, ge=1)
    # At most this many rows per output file; each input file's documents go to files of their own.
    rows_per_file: int = Field(default=20000, ge=1)
    # How many clean tasks run at once (default: 2 per CPU of the driver's node). The output does
    # not depend on it.
    num_workers: int | None = operational(None, ge=1)

    @field_validator("filters", mode="before")
    @classmethod
    def _check_filter_names_and_keys(cls, raw: Any) -> Any:
        # Checked here so the message names the filter's own keys (a generic union error cannot).
        if not isinstance(raw, list):
            return raw
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                continue
            if "name" not in item:
                raise ValueError(
                    f"filters.{index}: missing key 'name' (one of: {', '.join(FILTERS.names())})"
                )
            if item["name"] not in FILTERS:
                raise ValueError(f"filters.{index}.name: {FILTERS.unknown_message(str(item['name']))}")
            _check_filter_keys(index, item, FILTERS.get(item["name"]))
        return raw


def _check_filter_keys(index: int, item: dict[str, Any], filter_cls: type[DocumentFilter]) -> None:
    valid = sorted(filter_cls.model_fields)
    for key in item:
        if key not in filter_cls.model_fields:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"filters.{index}: unknown key {key!r} for filter {item['name']!r}{hint} (valid keys: {', '.join(valid)})"
            )
