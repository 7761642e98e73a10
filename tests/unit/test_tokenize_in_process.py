"""The shard stage's two tokenize paths (in this process, Ray Data actors) write the same bytes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from lmforge.tokenization import ShardConfig, build_shards
from lmforge.tokenization.ray_tokenize import _ordered_map, runs_on_this_machine
from tests.unit.test_tokenization_helpers import enwiki_docs, train_small_tokenizers, write_corpus

SEED = 5
CONFIG = ShardConfig(seq_len=64, validation_fraction=0.1, sequences_per_shard=200, batch_size=32)


@pytest.fixture(scope="module")
def corpus_dir(shared_data_dir, tmp_path_factory):
    """About 200 kB of articles over several part files, plus one empty document."""
    docs = enwiki_docs(shared_data_dir, max_chars=200_000)
    docs.insert(3, ("empty-doc", ""))
    return write_corpus(tmp_path_factory.mktemp("corpus"), docs, rows_per_file=45)


@pytest.fixture(scope="module")
def tokenizer_dirs(corpus_dir, tmp_path_factory):
    return train_small_tokenizers(corpus_dir, tmp_path_factory)


def file_digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


@pytest.mark.integration
@pytest.mark.parametrize(("packing", "algorithm"), [("clm", "bpe"), ("mlm", "wordpiece")])
def test_in_process_and_ray_data_write_identical_files(
    ray_runtime, corpus_dir, tokenizer_dirs, tmp_path, packing, algorithm
):
    tokenizer_dir = tokenizer_dirs[algorithm]
    build_shards(
        CONFIG, packing, corpus_dir, tokenizer_dir, tmp_path / "ray", SEED, tokenize_in_process=False
    )
    build_shards(
        CONFIG, packing, corpus_dir, tokenizer_dir, tmp_path / "here", SEED, tokenize_in_process=True
    )
    # A batch size that does not divide the part files changes no byte either.
    odd_batches = CONFIG.model_copy(update={"batch_size": 7})
    build_shards(
        odd_batches, packing, corpus_dir, tokenizer_dir, tmp_path / "here-7", SEED, tokenize_in_process=True
    )
    ray_digests = file_digests(tmp_path / "ray")
    assert len([name for name in ray_digests if name.startswith("train-")]) > 1  # several shards compared
    assert file_digests(tmp_path / "here") == ray_digests
    assert file_digests(tmp_path / "here-7") == ray_digests


@pytest.mark.unit
def test_local_shard_stage_starts_no_ray(corpus_dir, tokenizer_dirs, tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("a local corpus on a local runtime must not go through Ray")

    monkeypatch.setattr("lmforge.infra.ray_runtime.ensure_ray", no_ray)
    monkeypatch.delenv("LMFORGE_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    result = build_shards(CONFIG, "clm", corpus_dir, tokenizer_dirs["bpe"], tmp_path, SEED)
    assert result["train"]["num_sequences"] > 0


@pytest.mark.unit
def test_remote_corpus_or_cluster_tokenizes_on_ray(monkeypatch):
    import ray

    monkeypatch.delenv("LMFORGE_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setattr("lmforge.infra.ray_runtime.ray_initialized", lambda: False)
    local = ["/data/part-00000.parquet"]
    assert runs_on_this_machine(local)
    assert not runs_on_this_machine([*local, "s3://bucket/corpus/part-00001.parquet"])
    monkeypatch.setenv("LMFORGE_RAY_ADDRESS", "ray://head:10001")  # a cluster Ray is yet to connect to
    assert not runs_on_this_machine(local)

    monkeypatch.delenv("LMFORGE_RAY_ADDRESS")
    monkeypatch.setattr("lmforge.infra.ray_runtime.ray_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    assert runs_on_this_machine(local)  # connected, but one live node: this machine's cores only
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    assert not runs_on_this_machine(local)


@pytest.mark.unit
def test_ordered_map_keeps_order_errors_and_early_stops():
    def slow_square(number: int) -> int:
        time.sleep(0.001 * (number % 3))  # later items may finish first
        return number * number

    assert list(_ordered_map(slow_square, range(50), 2)) == [n * n for n in range(50)]
    assert list(_ordered_map(slow_square, [], 2)) == []

    def fail_on_three(number: int) -> int:
        if number == 3:
            raise ValueError("bad batch")
        return number

    results = _ordered_map(fail_on_three, range(10), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad batch"):
        next(results)

    taken: list[int] = []

    def counting():
        for number in range(1000):
            taken.append(number)
            yield number

    results = _ordered_map(slow_square, counting(), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    results.close()
    assert len(taken) <= 3 + 2  # at most `depth` items taken ahead of the caller
