"""TokenizerConfig / ShardConfig validation: errors name the key and say what is allowed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.tokenization import TOKENIZER_ALGORITHMS, ShardConfig, TokenizerConfig


@pytest.mark.unit
def test_defaults():
    config = TokenizerConfig()
    assert (config.algorithm, config.vocab_size, config.min_frequency) == ("bpe", 8192, 2)
    assert config.lowercase is None and config.max_training_documents is None
    shards = ShardConfig()
    assert (shards.seq_len, shards.validation_fraction, shards.sequences_per_shard, shards.batch_size) == (
        128,
        0.05,
        4096,
        256,
    )


@pytest.mark.unit
def test_registry_holds_three_algorithms():
    assert TOKENIZER_ALGORITHMS.names() == ["bpe", "unigram", "wordpiece"]


@pytest.mark.unit
def test_unknown_algorithm_names_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        validate_config(TokenizerConfig, {"algorithm": "wordpeice"}, source="tokenizer")
    message = str(err.value)
    assert "algorithm" in message and "did you mean 'wordpiece'" in message
    assert "bpe, unigram, wordpiece" in message


@pytest.mark.unit
def test_bpe_vocab_must_cover_the_byte_alphabet():
    with pytest.raises(ConfigError, match="vocab_size 100 is below the minimum 256"):
        validate_config(TokenizerConfig, {"algorithm": "bpe", "vocab_size": 100})
    assert TokenizerConfig(algorithm="bpe", vocab_size=256).vocab_size == 256
    assert TokenizerConfig(algorithm="wordpiece", vocab_size=100).vocab_size == 100


@pytest.mark.unit
def test_lowercase_defaults_per_algorithm():
    assert TokenizerConfig(algorithm="wordpiece").resolved_lowercase() is True
    assert TokenizerConfig(algorithm="bpe").resolved_lowercase() is False
    assert TokenizerConfig(algorithm="unigram").resolved_lowercase() is False
    assert TokenizerConfig(algorithm="wordpiece", lowercase=False).resolved_lowercase() is False


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"seq_len": 4}, "seq_len"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.5}, "validation_fraction"),
        ({"sequences_per_shard": 0}, "sequences_per_shard"),
        ({"batch_size": 0}, "batch_size"),
        ({"seq_length": 128}, "seq_length"),
    ],
)
def test_shard_config_rejects(raw, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(ShardConfig, raw, source="shards")


def test_sentinels_default_per_algorithm_and_only_where_supported():
    assert TokenizerConfig(algorithm="unigram").resolved_sentinels() == 100
    assert TokenizerConfig(algorithm="unigram", sentinels=20).resolved_sentinels() == 20
    assert TokenizerConfig(algorithm="bpe").resolved_sentinels() == 0
    with pytest.raises(ValidationError, match="'wordpiece' tokenizer has no sentinel tokens.*unigram"):
        TokenizerConfig(algorithm="wordpiece", sentinels=10)
    with pytest.raises(ValidationError, match="no room in vocab_size 64"):
        TokenizerConfig(algorithm="unigram", vocab_size=64)
