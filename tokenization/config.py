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
    # T5 sentinel tokens <extra_id_0>...<extra_id_{N-1}> for span corruption; None: the algorithm's
    # default (unigram 100, the others none; only unigram supports them).
    sentinels: int | None = Field(default=None, ge=0)

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
        algorithm = TOKENIZER_ALGORITHMS.get(self.algorithm)
        if self.sentinels and not algorithm.supports_sentinels:
            supported = [name for name, cls in TOKENIZER_ALGORITHMS.items() if cls.supports_sentinels]
            raise ValueError(
                f"sentinels: the {self.algorithm!r} tokenizer has no sentinel tokens "
                f"(algorithms with them: {', '.join(supported)}); remove sentinels or change the algorithm"
            )
        if self.resolved_sentinels() + len(algorithm.special_token_list()) >= self.vocab_size:
            raise ValueError(
                f"sentinels: {self.resolved_sentinels()} sentinels and the special tokens leave no room "
                f"in vocab_size {self.vocab_size}"
            )
        return self

    def resolved_sentinels(self) -> int:
        if self.sentinels is None:
            return TOKENIZER_ALGORITHMS.get(self.algorithm).default_sentinels
        return self.sentinels

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
