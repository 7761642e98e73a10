"""Corpus stage: read raw sources (readers registry), normalize, filter (filters registry), dedup."""

# Importing the reader modules registers them in READERS.
from corpus import hf_reader, wikiextractor  # noqa: F401
from corpus.clean import clean_corpus
from corpus.config import CorpusConfig, SourceConfig
from corpus.filters import FILTERS
from corpus.inputs import InputRef, check_inputs, list_inputs
from corpus.readers import READERS

__all__ = [
    "FILTERS",
    "READERS",
    "CorpusConfig",
    "InputRef",
    "SourceConfig",
    "check_inputs",
    "clean_corpus",
    "list_inputs",
]
