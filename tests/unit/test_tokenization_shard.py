"""build_shards end to end on real text, checked against an independent re-tokenization and packing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import ConfigError, DataError
from lmforge.tokenization import (
    ShardConfig,
    build_shards,
    load_split,
    load_tokenizer_meta,
    read_dataset_manifest,
    split_of,
)
from tests.unit.test_tokenization_helpers import enwiki_docs, train_small_tokenizers, write_corpus

SEED = 13
CONFIG = ShardConfig(seq_len=64, validation_fraction=0.1, sequences_per_shard=300, batch_size=64)


@pytest.fixture(scope="module")
def corpus_dir(shared_data_dir, tmp_path_factory):
    """About 300 kB of articles over several part files, plus one empty document."""
    docs = enwiki_docs(shared_data_dir, max_chars=300_000)
    docs.insert(5, ("empty-doc", ""))
    return write_corpus(tmp_path_factory.mktemp("corpus"), docs, rows_per_file=60)


@pytest.fixture(scope="module")
def tokenizer_dirs(corpus_dir, tmp_path_factory):
    return train_small_tokenizers(corpus_dir, tmp_path_factory)


def reference_streams(corpus_dir: Path, tokenizer_dir: Path, fraction: float, seed: int):
    """Per split: the doc ids and token lists, re-tokenized with AutoTokenizer in the driver."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    table = pq.ParquetDataset(sorted(corpus_dir.glob("part-*.parquet"))).read()
    doc_ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    splits = {"train": ([], []), "validation": ([], [])}
    for doc_id, ids in zip(doc_ids, encoded, strict=True):
        ids_list, tokens_list = splits[split_of(doc_id, fraction, seed)]
        ids_list.append(doc_id)
        tokens_list.append(ids)
    return splits


def reference_clm(documents, seq_len, eos):
    stream = [token for document in documents if document for token in [*document, eos]]
    count = len(stream) // seq_len
    return np.array(stream[: count * seq_len], dtype=np.int32).reshape(count, seq_len), len(stream) % seq_len


def reference_mlm(documents, seq_len, cls, sep):
    stream: list[int] = []
    for document in (document for document in documents if document):
        stream += [sep, *document] if stream else document
    chunk = seq_len - 2
    count = len(stream) // chunk
    rows = [[cls, *stream[i * chunk : (i + 1) * chunk], sep] for i in range(count)]
    return np.array(rows, dtype=np.int32).reshape(count, seq_len), len(stream) % chunk


def file_digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


@pytest.mark.unit
def test_packing_without_its_special_tokens_is_a_config_error(corpus_dir, tokenizer_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"packing 'clm' needs special token\(s\) \['eos'\].*'wordpiece'"):
        build_shards(CONFIG, "clm", corpus_dir, tokenizer_dirs["wordpiece"], tmp_path, SEED)
    with pytest.raises(ConfigError, match=r"packing 'mlm' needs special token\(s\) \['cls', 'sep'\]"):
        build_shards(CONFIG, "mlm", corpus_dir, tokenizer_dirs["bpe"], tmp_path, SEED)
    with pytest.raises(ConfigError, match="unknown packing 'spans'"):
        build_shards(CONFIG, "spans", corpus_dir, tokenizer_dirs["bpe"], tmp_path, SEED)
    with pytest.raises(ConfigError, match=r"packing 'span' with options \{\}.*raw_length"):
        build_shards(CONFIG, "span", corpus_dir, tokenizer_dirs["bpe"], tmp_path, SEED)


@pytest.mark.integration
def test_clm_shards_match_reference_and_are_deterministic(ray_runtime, corpus_dir, tokenizer_dirs, tmp_path):
    tokenizer_dir = tokenizer_dirs["bpe"]
    result = build_shards(CONFIG, "clm", corpus_dir, tokenizer_dir, tmp_path / "first", SEED)
    # A throughput-only setting (the tokenize batch size) changes no byte of the artifact.
    other_batching = CONFIG.model_copy(update={"batch_size": 7})
    build_shards(other_batching, "clm", corpus_dir, tokenizer_dir, tmp_path / "second", SEED)
    assert file_digests(tmp_path / "first") == file_digests(tmp_path / "second")

    manifest = read_dataset_manifest(tmp_path / "first")
    eos = load_tokenizer_meta(tokenizer_dir)["special_ids"]["eos"]
    assert manifest["special_ids"]["eos"] == eos
    assert (manifest["packing"], manifest["seq_len"], manifest["seed"]) == ("clm", 64, SEED)
    reference = reference_streams(corpus_dir, tokenizer_dir, CONFIG.validation_fraction, SEED)
    assert not set(reference["train"][0]) & set(reference["validation"][0])
    for split, (doc_ids, documents) in reference.items():
        expected, dropped = reference_clm(documents, CONFIG.seq_len, eos)
        # Exact equality also proves no validation document leaked into train, or back.
        np.testing.assert_array_equal(load_split(tmp_path / "first", split), expected)
        totals = manifest["splits"][split]
        assert totals == result[split]
        assert (
            totals["doc_ids_sha256"]
            == hashlib.sha256("".join(f"{d}\n" for d in doc_ids).encode()).hexdigest()
        )
        non_empty = [document for document in documents if document]
        assert totals["num_documents"] == len(non_empty)
        assert totals["num_empty_documents"] == len(documents) - len(non_empty)
        assert totals["num_document_tokens"] == sum(len(document) for document in documents)
        assert totals["num_dropped_tail_tokens"] == dropped
        assert totals["num_sequences"] == len(expected)
        assert (
            totals["num_tokens"]
            == expected.size
            == (
                totals["num_document_tokens"]
                + totals["num_separator_tokens"]
                - totals["num_dropped_tail_tokens"]
            )
        )
        shards = [shard for shard in manifest["shards"] if shard["split"] == split]
        assert totals["num_shards"] == len(shards)
        assert sum(shard["num_sequences"] for shard in shards) == totals["num_sequences"]
        assert sum(shard["num_tokens"] for shard in shards) == totals["num_tokens"]
        assert [shard["path"] for shard in shards] == [f"{split}-{i:05d}.parquet" for i in range(len(shards))]
    assert manifest["splits"]["validation"]["num_sequences"] > 0
    assert manifest["splits"]["train"]["num_shards"] > 1  # exercises the shard roll-over
    assert (
        manifest["splits"]["train"]["num_empty_documents"]
        + manifest["splits"]["validation"]["num_empty_documents"]
        == 1
    )
    digests = file_digests(tmp_path / "first")
    for shard in manifest["shards"]:
        assert digests[shard["path"]] == shard["sha256"]
    assert set(digests) == {"dataset_manifest.json", *(shard["path"] for shard in manifest["shards"])}


@pytest.mark.integration
def test_mlm_shards_are_cls_sep_wrapped_reference_chunks(ray_runtime, corpus_dir, tokenizer_dirs, tmp_path):
    tokenizer_dir = tokenizer_dirs["wordpiece"]
    build_shards(CONFIG, "mlm", corpus_dir, tokenizer_dir, tmp_path, SEED)
    special_ids = load_tokenizer_meta(tokenizer_dir)["special_ids"]
    reference = reference_streams(corpus_dir, tokenizer_dir, CONFIG.validation_fraction, SEED)
    for split, (_, documents) in reference.items():
        sequences = load_split(tmp_path, split)
        expected, dropped = reference_mlm(documents, CONFIG.seq_len, special_ids["cls"], special_ids["sep"])
        assert (sequences[:, 0] == special_ids["cls"]).all() and (
            sequences[:, -1] == special_ids["sep"]
        ).all()
        np.testing.assert_array_equal(sequences, expected)
        assert read_dataset_manifest(tmp_path)["splits"][split]["num_dropped_tail_tokens"] == dropped


@pytest.mark.integration
def test_corpus_too_small_for_seq_len_is_a_data_error(ray_runtime, tokenizer_dirs, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", [("a", "A short document."), ("b", "Another one.")])
    config = ShardConfig(seq_len=512, validation_fraction=0.01)
    with pytest.raises(DataError, match=r"train split has no complete sequence of seq_len=512 \(2 documents"):
        build_shards(config, "clm", corpus, tokenizer_dirs["bpe"], tmp_path / "out", SEED)
