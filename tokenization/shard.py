"""Shard stage: tokenize the corpus (here, or with Ray Data on a cluster), split by document, pack, and
write Parquet shards."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.core.configbase import identity_view
from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.artifact_files import read_json, sha256_file
from lmforge.tokenization.config import ShardConfig
from lmforge.tokenization.corpus_files import list_corpus_files
from lmforge.tokenization.packing import PACKINGS, missing_specials
from lmforge.tokenization.shard_writer import SplitWriter, read_sequences
from lmforge.tokenization.split import SPLITS, TRAIN, VALIDATION, split_of
from lmforge.tokenization.train import TOKENIZER_FILE, load_tokenizer_meta

log = get_logger(__name__)

MANIFEST_FILE = "dataset_manifest.json"
MANIFEST_VERSION = 1


def build_shards(
    config: ShardConfig,
    packing: str,
    corpus_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    seed: int,
    corpus_location: str | None = None,
    packing_options: dict[str, Any] | None = None,
    tokenize_in_process: bool | None = None,
) -> dict[str, Any]:
    """Write train-/validation-NNNNN.parquet and dataset_manifest.json into `output_dir`.

    `config.seq_len` is the length the model sees; `packing_options` (from the objective) go to the
    packer, e.g. the raw window length span corruption needs. The manifest's `seq_len` is the length
    of the stored rows, `input_length` the model's.

    `corpus_location`: where Ray's tokenize tasks read the corpus files from (a path or fsspec URL
    holding the same file names as `corpus_dir`, e.g. the artifact store's copy); default `corpus_dir`.
    `tokenize_in_process`: tokenize in this process (True) or on a Ray Data actor pool (False); None:
    in this process unless the corpus is remote or Ray runs on a cluster. It changes no output byte.
    Returns the manifest's split totals plus `num_shards` and `seconds`.
    """
    start = time.perf_counter()
    packer_class = PACKINGS.get(packing)
    tokenizer_dir = Path(tokenizer_dir)
    meta = load_tokenizer_meta(tokenizer_dir)
    special_ids = meta["special_ids"]
    missing = missing_specials(packer_class, special_ids)
    if missing:
        raise ConfigError(
            f"packing {packing!r} needs special token(s) {missing}, but the {meta['algorithm']!r} "
            f"tokenizer at {tokenizer_dir} defines only {sorted(special_ids)}"
        )
    files = list_corpus_files(Path(corpus_dir))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_shards(output_dir)

    options = dict(packing_options or {})
    try:
        packers = {split: packer_class(config.seq_len, special_ids, **options) for split in SPLITS}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"packing {packing!r} with options {options}: {err}") from None
    writers = {
        split: SplitWriter(split, packers[split], output_dir, config.sequences_per_shard) for split in SPLITS
    }
    stored_len = packers[TRAIN].seq_len
    from lmforge.tokenization.ray_tokenize import iter_tokenized_documents

    base = (corpus_location or str(Path(corpus_dir).resolve())).rstrip("/")
    uris = [f"{base}/{path.name}" for path in files]
    documents = iter_tokenized_documents(uris, tokenizer_dir, config.batch_size, tokenize_in_process)
    for doc_id, token_ids in documents:
        writers[split_of(doc_id, config.validation_fraction, seed)].add_document(doc_id, token_ids)
    totals = {split: writer.finish() for split, writer in writers.items()}
    _check_totals(totals, config, corpus_dir)

    manifest = {
        "format_version": MANIFEST_VERSION,
        "packing": packing,
        "packing_options": options,
        "seq_len": stored_len,
        "input_length": config.seq_len,
        "seed": seed,
        # Only the fields that shape the shards: this file is part of the artifact's content id.
        "config": identity_view(config),
        "special_ids": special_ids,
        "tokenizer": {
            "algorithm": meta["algorithm"],
            "vocab_size": meta["vocab_size"],
            "tokenizer_sha256": sha256_file(tokenizer_dir / TOKENIZER_FILE),
        },
        "splits": totals,
        "shards": [shard for writer in writers.values() for shard in writer.shards],
    }
    (output_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    seconds = time.perf_counter() - start
    log.info(
        "packed %s: %d train / %d validation sequences of %d tokens in %.1fs",
        packing,
        totals[TRAIN]["num_sequences"],
        totals[VALIDATION]["num_sequences"],
        stored_len,
        seconds,
    )
    return {
        **totals,
        "packing": packing,
        "seq_len": stored_len,
        "num_shards": len(manifest["shards"]),
        "seconds": seconds,
    }


def read_dataset_manifest(shards_dir: Path) -> dict[str, Any]:
    return read_json(Path(shards_dir) / MANIFEST_FILE, "a shard directory")


def load_split(shards_dir: Path, split: str) -> np.ndarray:
    """All sequences of `split` as an int32 array of shape (num_sequences, seq_len), in shard order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    manifest = read_dataset_manifest(shards_dir)
    seq_len = manifest["seq_len"]
    arrays = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        array = read_sequences(Path(shards_dir) / shard["path"], seq_len)
        if len(array) != shard["num_sequences"]:
            raise ArtifactError(
                f"shard {shard['path']} in {shards_dir} has {len(array)} sequences, "
                f"the manifest says {shard['num_sequences']}"
            )
        arrays.append(array)
    if not arrays:
        return np.empty((0, seq_len), dtype=np.int32)
    return np.concatenate(arrays)


def _check_totals(totals: dict[str, dict[str, Any]], config: ShardConfig, corpus_dir: Path) -> None:
    train = totals[TRAIN]
    if train["num_sequences"] == 0:
        raise DataError(
            f"corpus {corpus_dir}: the train split has no complete sequence of seq_len={config.seq_len} "
            f"({train['num_documents']} documents, {train['num_document_tokens']} tokens, "
            f"{train['num_dropped_tail_tokens']} dropped as a partial tail); "
            "use a larger corpus or a smaller seq_len"
        )
    validation = totals[VALIDATION]
    if validation["num_sequences"] == 0:
        # Pre-training evaluates on this split; fail here, before hours of training, not after.
        raise DataError(
            f"corpus {corpus_dir}: the validation split has no complete sequence of seq_len={config.seq_len} "
            f"({validation['num_documents']} documents, {validation['num_document_tokens']} tokens); "
            "raise shard.validation_fraction or use a larger corpus"
        )


def _remove_stale_shards(output_dir: Path) -> None:
    # A re-run with fewer shards must not leave shards the new manifest does not list.
    for split in SPLITS:
        for path in sorted(output_dir.glob(f"{split}-*.parquet")):
            log.info("removing stale shard %s", path)
            path.unlink()
