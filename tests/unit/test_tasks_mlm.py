"""MLM accuracy: masking statistics and accuracy/loss against a full-model reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.core.errors import ConfigError
from lmforge.tasks.config import MlmAccuracyConfig
from lmforge.tasks.mlm_accuracy import mask_sequences, masked_logits, run_mlm_accuracy
from tests.unit.test_tasks_support import build_tiny_bert, write_validation_shards

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model_dir = build_tiny_bert(tmp_path_factory.mktemp("bert"))
    shards_dir = tmp_path_factory.mktemp("shards")
    return model_dir, shards_dir, write_validation_shards(shards_dir, model_dir)


def test_masking_rate_specials_and_seed():
    ids = np.random.default_rng(1).integers(0, 50, size=(400, 64))
    masked, selected = mask_sequences(ids, {0, 1, 2}, 99, 0.15, seed=3)
    assert not selected[np.isin(ids, [0, 1, 2])].any()
    rate = selected.sum() / (~np.isin(ids, [0, 1, 2])).sum()
    assert abs(rate - 0.15) < 0.01  # ~24k candidates: 4 standard deviations is ~0.009
    assert (masked[selected] == 99).all() and (masked[~selected] == ids[~selected]).all()
    assert (
        mask_sequences(ids, {0}, 99, 0.15, seed=3)[1] == mask_sequences(ids, {0}, 99, 0.15, seed=3)[1]
    ).all()


def test_head_on_masked_positions_equals_full_logits(bert):
    from transformers import AutoModelForMaskedLM

    model_dir, _, ids = bert
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    input_ids = torch.from_numpy(ids[:4])
    chosen = torch.rand(input_ids.shape) < 0.3
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits[chosen]
        assert torch.allclose(masked_logits(model, input_ids, chosen), expected, atol=1e-5)


def test_accuracy_and_loss_match_reference(bert, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model_dir, shards_dir, ids = bert
    config = MlmAccuracyConfig(max_sequences=7, batch_size=3, mask_probability=0.3)
    metrics = run_mlm_accuracy(config, model_dir, shards_dir, None, tmp_path, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    ids = ids[:7]
    rng = np.random.default_rng(config.mask_seed)
    selected = ~np.isin(ids, tokenizer.all_special_ids) & (rng.random(ids.shape) < 0.3)
    masked = np.where(selected, tokenizer.mask_token_id, ids)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(masked)).logits[torch.from_numpy(selected)]
    targets = torch.from_numpy(ids[selected])
    count = int(selected.sum())
    assert metrics["num_sequences"] == 7 and metrics["num_masked_tokens"] == count > 0
    assert metrics["accuracy"] == int((logits.argmax(-1) == targets).sum()) / count
    assert metrics["masked_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5
    )


def test_metrics_file_is_deterministic_and_timings_are_telemetry(bert, tmp_path):
    model_dir, shards_dir, _ = bert
    config = MlmAccuracyConfig(max_sequences=7, batch_size=3)
    first = run_mlm_accuracy(config, model_dir, shards_dir, None, tmp_path / "a", seed=0)
    run_mlm_accuracy(config, model_dir, shards_dir, None, tmp_path / "b", seed=1)  # mask_seed, not seed
    saved = (tmp_path / "a" / "metrics.json").read_text()
    assert saved == (tmp_path / "b" / "metrics.json").read_text()
    assert json.loads(saved) == {key: value for key, value in first.items() if key != "seconds"}
    assert json.loads((tmp_path / "a" / "telemetry" / "timings.json").read_text()) == {
        "seconds": first["seconds"]
    }


def test_needs_shards(bert, tmp_path):
    with pytest.raises(ConfigError, match="shards directory"):
        run_mlm_accuracy(MlmAccuracyConfig(), bert[0], None, None, tmp_path, seed=0)


def test_special_tokens_missing_from_tokenizer_come_from_meta(tmp_path):
    from lmforge.tasks.modeling import load_tokenizer

    expected = load_tokenizer(build_tiny_bert(tmp_path)).mask_token_id
    assert expected is not None
    config_path = tmp_path / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    saved.pop("mask_token", None)
    config_path.write_text(json.dumps(saved))
    assert load_tokenizer(tmp_path).mask_token_id == expected  # from the meta file
    (tmp_path / "lmforge_tokenizer.json").write_text(json.dumps({"special_ids": {}}))
    assert load_tokenizer(tmp_path).mask_token is None
