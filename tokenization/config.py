"""Typed configs for the tokenizer-training and shard stages."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lmforge.core.configbase import StrictModel, choice, operational
from lmforge.tokenization.algorithms import TOKENIZER_ALGORITHMS


class TokenizerConfig(StrictModel):
    """How to train the tokenizer (`tokenizer:` section)."""

    algorithm: str = choice("bpe", TOKENIZER_ALGORITHMS.names)
    vocab_size: int = 8192
    # Ignored by unigram, whose trainer prunes by likelihood instead of pair counts.
    min_frequency: int = Field(default=2, ge=1)
    # None: the algorithm's own default (wordpiece lowercases like BERT uncased, the others keep case).
    lowercase: bool | None = None
    max_training_documents: int | None = Field(default=None, ge=1)

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        if value not in TOKENIZER_ALGORITHMS:
            # ValueError (not ConfigError) so validate_config reports it under the `algorithm` key.
            raise ValueError(TOKENIZER_ALGORITHMS.unknown_message(value))
        return value

    @model_validator(mode="after")
    def _vocab_fits_algorithm(self) -> TokenizerConfig:
        minimum = TOKENIZER_ALGORITHMS.get(self.algorithm).min_vocab_size
        if self.vocab_size < minimum:
            raise ValueError(
                f"vocab_size {self.vocab_size} is below the minimum {minimum} for algorithm {self.algorithm!r}"
            )
        return self

    def resolved_lowercase(self) -> bool:
        if self.lowercase is None:
            return TOKENIZER_ALGORITHMS.get(self.algorithm).default_lowercase
        return self.lowercase


class ShardConfig(StrictModel):
    """How to tokenize, pack and shard the corpus (`shards:` section)."""

    seq_len: int = Field(default=128, ge=8)
    validation_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    sequences_per_shard: int = Field(default=4096, ge=1)
    # Documents per Ray Data tokenize batch: large enough to amortise the call, small enough to stream.
    batch_size: int = operational(256, ge=1)  # throughput only
