"""Corpus stage: read raw sources (readers registry), normalize, identify the language, filter (filters
registry), check for evaluation text, redact PII, dedup exactly and near-exactly."""

# Importing the reader modules registers them in READERS.
from lmforge.corpus import hf_reader, wikiextractor  # noqa: F401
from lmforge.corpus.clean import clean_corpus
from lmforge.corpus.config import CorpusConfig, SourceConfig
from lmforge.corpus.filters import FILTERS
from lmforge.corpus.inputs import InputRef, check_inputs, eval_set_inputs, list_inputs
from lmforge.corpus.readers import READERS

__all__ = [
    "FILTERS",
    "READERS",
    "CorpusConfig",
    "InputRef",
    "SourceConfig",
    "check_inputs",
    "clean_corpus",
    "eval_set_inputs",
    "list_inputs",
]
