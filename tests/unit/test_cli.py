"""CLI: bad configs fail before any work with exit code 2 and a message naming the key or path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.app.cli import main

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LMFORGE_STORE", str(tmp_path / "store"))
    # Missing data falls back to the hub; a unit test must not reach it (or run the pipeline).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def run_cli(capsys, *args):
    code = main(["run", str(CONFIGS / "tiny.yaml"), *args])
    return code, capsys.readouterr().err


def test_unknown_key_exits_2_naming_key(empty_data_dir, capsys):
    code, err = run_cli(capsys, "--set", "pretrain.lerning_rate=0.1")
    assert code == 2
    assert "pretrain.lerning_rate" in err and "learning_rate" in err
    assert not (empty_data_dir / "store").exists(), "nothing may be written before validation passes"


def test_wrong_type_exits_2(empty_data_dir, capsys):
    code, err = run_cli(capsys, "--set", "pretrain.max_steps=lots")
    assert code == 2 and "pretrain.max_steps" in err


def test_missing_data_path_exits_2_naming_key(empty_data_dir, capsys):
    code, err = run_cli(capsys)
    assert code == 2
    assert "corpus.sources[0].path" in err and "enwiki_extract/wiki_00.txt" in err
    assert "hf://wikimedia/wikipedia" in err and "LMFORGE_DATA_DIR" in err


def test_bad_force_stage_exits_2(empty_data_dir, shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    code, err = run_cli(capsys, "--force", "pretrian")
    assert code == 2 and "pretrian" in err


def test_bad_stage_exits_2_naming_option_and_choices(empty_data_dir, shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    code, err = run_cli(capsys, "--stage", "pretrian")
    assert code == 2
    assert "--stage 'pretrian'" in err and "clean, tokenizer, shard, pretrain, finetune, eval" in err
    assert not (empty_data_dir / "store").exists()


def test_objective_tokenizer_mismatch_exits_2(empty_data_dir, capsys):
    code, err = run_cli(capsys, "--set", "pretrain.objective=mlm")
    assert code == 2 and "lacks ['mask', 'cls', 'sep']" in err and "wordpiece" in err
    # CLM packing joins documents with EOS, which WordPiece does not define.
    code, err = run_cli(capsys, "--set", "tokenizer.algorithm=wordpiece")
    assert code == 2 and "lacks ['eos']" in err


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_validates(preset):
    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import load_config

    config = load_config(PipelineConfig, CONFIGS / preset)
    assert config.name


def test_gc_cli_dry_run_then_remove_prints_bytes(tmp_path, capsys):
    import os
    import time

    store = tmp_path / "store"
    orphan = store / "tmp" / "abc123"
    orphan.mkdir(parents=True)
    (orphan / "f.bin").write_bytes(b"x" * 2048)
    then = time.time() - 3 * 3600
    for path in (orphan, orphan / "f.bin"):
        os.utime(path, (then, then))
    assert main(["gc", "--older-than", "2h", "--dry-run", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "would remove tmp/abc123 (2048 bytes)" in out and orphan.exists()
    assert main(["gc", "--older-than", "4h", "--store", str(store)]) == 0
    assert "freed 0 bytes" in capsys.readouterr().out and orphan.exists()
    assert main(["gc", "--older-than", "2h", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "removed tmp/abc123 (2048 bytes)" in out and "freed 2048 bytes (2.0 KiB)" in out
    assert not orphan.exists()


def test_gc_cli_bad_duration_exits_2(tmp_path, capsys):
    assert main(["gc", "--older-than", "soon", "--store", str(tmp_path / "store")]) == 2
    assert "soon" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_store_url_with_unknown_scheme_exits_2_naming_store(shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    code, err = run_cli(capsys, "--store", "s3x://bucket/store")
    assert code == 2
    assert "store: no filesystem for scheme 's3x'" in err and len(err.strip().splitlines()) == 1


def test_store_url_with_missing_bucket_exits_2_before_any_work(
    s3_store_url, shared_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    missing = "s3://no-such-bucket-lmforge/store"
    code, err = run_cli(capsys, "--store", missing)
    assert code == 2
    assert f"store: bucket 'no-such-bucket-lmforge' of '{missing}' does not exist" in err
    # Nothing of the store is cached before the check. (The run's Prefect server is launched before
    # it, since it needs seconds to start, and stopped with it; its database template may be built.)
    assert not (tmp_path / "cache" / "stores").exists(), "nothing of the store cached before the check"
