"""Tokenizer training (bpe, wordpiece, unigram) and tokenize + pack + shard of the cleaned corpus."""

from lmforge.tokenization.algorithms import TOKENIZER_ALGORITHMS
from lmforge.tokenization.config import ShardConfig, TokenizerConfig
from lmforge.tokenization.packing import PACKINGS
from lmforge.tokenization.shard import build_shards, load_split, read_dataset_manifest
from lmforge.tokenization.split import split_of
from lmforge.tokenization.train import load_tokenizer_meta, train_tokenizer

__all__ = [
    "PACKINGS",
    "TOKENIZER_ALGORITHMS",
    "ShardConfig",
    "TokenizerConfig",
    "build_shards",
    "load_split",
    "load_tokenizer_meta",
    "read_dataset_manifest",
    "split_of",
    "train_tokenizer",
]
