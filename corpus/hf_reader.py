"""Reader for Hugging Face datasets: `hf://owner/name` on the Hub, or a local dataset directory/file."""

from __future__ import annotations

from collections.abc import Iterator

from lmforge.corpus.config import SourceConfig
from lmforge.corpus.readers import READERS, RawRecord, field_record
from lmforge.infra.data_paths import hub_dataset_id, is_hf_uri, split_revision


def hf_dataset_name(target: str) -> str:
    """The first argument of `datasets.load_dataset`: a Hub id (`owner/name`) or a local path."""
    return hub_dataset_id(target) if is_hf_uri(target) else target


@READERS.register("hf")
def read_hf(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """Streams `source.hf_split` of the dataset, so nothing is downloaded up front; with
    `source.max_documents` it stops after that many rows, having fetched only the data files (for
    Parquet, the row groups) those rows lie in, not the whole dump."""
    import datasets

    # The flow pins hub URIs to a commit (hf://owner/name@sha) before the recipe is computed.
    revision = split_revision(target)[1] if is_hf_uri(target) else None
    dataset = datasets.load_dataset(
        hf_dataset_name(target), source.hf_name, split=source.hf_split, streaming=True, revision=revision
    )
    if source.max_documents is not None:
        dataset = dataset.take(source.max_documents)
    for row_number, row in enumerate(dataset):
        yield field_record(str(row_number), row, source.text_field, source.max_document_bytes)
