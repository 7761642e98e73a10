"""Tokenizer-training stage: corpus Parquet in, a Hugging Face tokenizer directory out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.artifact_files import read_json, sha256_file
from lmforge.tokenization.algorithms import TOKENIZER_ALGORITHMS, TokenizerAlgorithm, sentinel_tokens
from lmforge.tokenization.config import TokenizerConfig
from lmforge.tokenization.corpus_files import iter_text_batches, list_corpus_files

log = get_logger(__name__)

META_FILE = "lmforge_tokenizer.json"
TOKENIZER_FILE = "tokenizer.json"
# The tokenizer has no length of its own; the model stage re-saves it with its sequence length.
# This is transformers' own "no limit" value, written explicitly so the file never depends on defaults.
NO_MODEL_MAX_LENGTH = int(1e30)


def train_tokenizer(config: TokenizerConfig, corpus_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Train `config.algorithm` on the corpus texts and save an AutoTokenizer-loadable directory.

    Returns `algorithm`, `vocab_size` (actual), `num_training_documents`, `seconds`.
    """
    start = time.perf_counter()
    algorithm = TOKENIZER_ALGORITHMS.get(config.algorithm)()
    lowercase = config.resolved_lowercase()
    files = list_corpus_files(Path(corpus_dir))

    counter = _DocumentCounter(iter_text_batches(files, config.max_training_documents))
    tokenizer = algorithm.training_tokenizer(lowercase)
    tokenizer.train_from_iterator(counter, trainer=algorithm.trainer(config))
    if counter.num_documents == 0:
        raise DataError(f"corpus {corpus_dir} has no documents to train a tokenizer on")
    tokenizer = algorithm.finalize(tokenizer, config)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _save_pretrained(tokenizer, algorithm, output_dir, sentinel_tokens(config.resolved_sentinels()))
    meta = _build_meta(config, algorithm, lowercase, output_dir, counter.num_documents)
    (output_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    seconds = time.perf_counter() - start
    log.info(
        "trained %s tokenizer: vocab %d from %d documents in %.1fs",
        config.algorithm,
        meta["vocab_size"],
        counter.num_documents,
        seconds,
    )
    return {
        "algorithm": config.algorithm,
        "vocab_size": meta["vocab_size"],
        "num_training_documents": counter.num_documents,
        "seconds": seconds,
    }


def load_tokenizer_meta(tokenizer_dir: Path) -> dict[str, Any]:
    """The `lmforge_tokenizer.json` written by train_tokenizer (algorithm, vocab_size, special ids)."""
    return read_json(Path(tokenizer_dir) / META_FILE, "a trained tokenizer")


def optional_tokenizer_meta(tokenizer_dir: Path) -> dict[str, Any]:
    """The meta file if the directory has one (a model directory from elsewhere may not), else {}."""
    path = Path(tokenizer_dir) / META_FILE
    return read_json(path, "a trained tokenizer") if path.is_file() else {}


class _DocumentCounter:
    """Passes text batches through to the trainer and counts the documents it saw."""

    def __init__(self, batches: Any) -> None:
        self._batches = batches
        self.num_documents = 0

    def __iter__(self) -> Any:
        for batch in self._batches:
            self.num_documents += len(batch)
            yield batch


def _save_pretrained(
    tokenizer: Any, algorithm: TokenizerAlgorithm, output_dir: Path, sentinels: list[str]
) -> None:
    from transformers import PreTrainedTokenizerFast

    # transformers 5 does not read roles from tokenizer.json: without these, pad_token is None.
    role_kwargs: dict[str, Any] = {f"{role}_token": token for role, token in algorithm.special_tokens.items()}
    if sentinels:  # what T5's tokenizers call extra ids; decode(skip_special_tokens=True) drops them
        role_kwargs["extra_special_tokens"] = sentinels
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=NO_MODEL_MAX_LENGTH, **role_kwargs
    )
    wrapped.save_pretrained(str(output_dir))


def _build_meta(
    config: TokenizerConfig,
    algorithm: TokenizerAlgorithm,
    lowercase: bool,
    output_dir: Path,
    num_documents: int,
) -> dict[str, Any]:
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(output_dir / TOKENIZER_FILE))
    special_ids = {}
    for role, token in algorithm.special_tokens.items():
        token_id = saved.token_to_id(token)
        if token_id is None:
            raise ArtifactError(
                f"special token {token!r} ({role}) is missing from {output_dir / TOKENIZER_FILE}"
            )
        special_ids[role] = token_id
    sentinel_ids = [saved.token_to_id(token) for token in sentinel_tokens(config.resolved_sentinels())]
    if None in sentinel_ids:
        raise ArtifactError(f"a sentinel token is missing from {output_dir / TOKENIZER_FILE}")
    return {
        "algorithm": config.algorithm,
        "vocab_size": saved.get_vocab_size(with_added_tokens=True),
        "lowercase": lowercase,
        "special_tokens": dict(algorithm.special_tokens),
        "special_ids": special_ids,
        "sentinel_ids": sentinel_ids,
        "num_training_documents": num_documents,
        "tokenizer_sha256": sha256_file(output_dir / TOKENIZER_FILE),
        "config": config.model_dump(mode="json"),
    }
