"""The paradigm lab's config: branches merged into the base config, the FLOP budget handed to each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.app.config import PipelineConfig, branch_configs, deep_merge
from lmforge.app.lab_report import comparison_rows, lab_blocks
from lmforge.core.configbase import load_config, validate_config
from lmforge.core.errors import ConfigError

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["paradigms-tiny.yaml", "paradigms.yaml"])
def test_lab_configs_give_one_pipeline_per_paradigm_at_one_budget(name):
    config = load_config(PipelineConfig, CONFIGS / name)
    branches = branch_configs(config)
    assert config.lab is not None and list(branches) == ["mlm", "clm", "span"]
    for branch, branch_config in branches.items():
        assert branch_config.name == f"{config.name}-{branch}"
        assert branch_config.pretrain.objective == branch
        assert branch_config.pretrain.compute_budget_flops == config.lab.compute_budget_flops
        assert branch_config.lab is None
        # Everything else is the base config's: the same corpus and tokenizer, so stages are shared.
        assert branch_config.corpus == config.corpus and branch_config.tokenizer == config.tokenizer
        assert branch_config.pretrain.model == config.pretrain.model


def test_branch_errors_name_the_branch():
    raw = yaml.safe_load((CONFIGS / "paradigms-tiny.yaml").read_text())
    raw["lab"]["branches"]["clm"] = {"pretrain": {"objective": "clmm"}}
    with pytest.raises(ConfigError, match=r"(?s)lab\.branches\.clm.*clmm"):
        validate_config(PipelineConfig, raw)
    raw["lab"]["branches"]["clm"] = {"pretrain": {"objective": "clm", "max_steps": 10}}
    with pytest.raises(ConfigError, match=r"lab\.branches\.clm: pretrain\.max_steps is derived"):
        validate_config(PipelineConfig, raw)
    raw["lab"]["branches"]["clm"] = {"pretrain": {"objective": "clm"}}
    with pytest.raises(ConfigError, match=r"lab: pretrain\.max_steps is derived"):
        validate_config(PipelineConfig, {**raw, "pretrain": {**raw["pretrain"], "max_steps": 50}})
    # A dumped config (as a flow parameter carries it) holds max_steps at its default: accepted.
    dumped = validate_config(PipelineConfig, raw).model_dump(mode="json")
    assert list(branch_configs(validate_config(PipelineConfig, dumped))) == ["mlm", "clm", "span"]
    raw["lab"]["branches"] = {"only": {}}
    with pytest.raises(ConfigError, match="branches"):
        validate_config(PipelineConfig, raw)


def test_deep_merge_replaces_leaves_and_merges_sections():
    base = {"pretrain": {"objective": "clm", "model": {"size": "debug"}}, "seed": 1}
    merged = deep_merge(base, {"pretrain": {"model": {"dropout": 0.1}}, "seed": 2})
    assert merged == {"pretrain": {"objective": "clm", "model": {"size": "debug", "dropout": 0.1}}, "seed": 2}
    assert base["pretrain"]["model"] == {"size": "debug"}  # the base is not modified


def test_report_table_shows_measured_values_and_na_for_what_a_branch_lacks():
    def record(objective: str, pretrain: dict, stages: dict | None = None) -> dict:
        return {
            "run_id": f"lab-{objective}",
            "status": "completed",
            "config": {"pretrain": {"objective": objective}, "shard": {"seq_len": 64}},
            "stages": {"pretrain": {"metrics": pretrain}, **(stages or {})},
        }

    def finetune(size: str, seed: int, init: str, accuracy: float, invalid: float | None = None) -> dict:
        metrics = {"primary_metric": "accuracy", "dev_accuracy": accuracy, "dev_invalid_fraction": invalid}
        return {f"finetune/sst2/finetune-{size}-s{seed}/{init}": {"metrics": metrics}}

    budget = {"flops_per_step": 4.0e9, "loss_tokens_per_step": 200, "max_steps": 30}
    # The span branch's largest size is "all": the 100-example cells are left out of its cells.
    span_grid = {
        **finetune("100", 0, "pretrained", 0.1, 0.9),
        **finetune("all", 0, "pretrained", 0.80, 0.1),
        **finetune("all", 1, "pretrained", 0.84, 0.2),
        **finetune("all", 0, "random", 0.6, 0.5),
    }
    branches = {
        "mlm": record("mlm", {"budget": budget, "tokens_per_step": 2048, "final_val_loss": 6.5}),
        "clm": record(
            "clm",
            {"budget": {**budget, "loss_tokens_per_step": 2016}, "tokens_per_step": 2048},
            {"eval/wikitext_perplexity": {"metrics": {"perplexity": 812.0}}},
        ),
        "span": record("span", {"budget": budget, "tokens_per_step": 2048}, span_grid),
    }
    headers, rows = comparison_rows(branches, store=None)
    table = {row[0]: row[1:] for row in rows}
    assert headers == ["", "mlm", "clm", "span"]
    assert table["attention"] == ["bidirectional", "causal", "encoder-decoder"]
    assert table["training FLOPs per loss-bearing token"] == ["20,000,000", "1,984,127", "20,000,000"]
    assert table["training FLOPs per input token"] == ["1,953,125"] * 3
    assert table["WikiText-2 perplexity / pseudo-perplexity"] == ["n/a", "812 (perplexity)", "n/a"]
    assert table["inference FLOPs per generated token"] == ["n/a"] * 3  # no store, no export
    assert table["SST-2 fine-tune accuracy, pretrained init (largest train size)"] == [
        "n/a",
        "n/a",
        "0.82 (mean of 2 seeds)",
    ]
    assert table["SST-2 fine-tune accuracy, random init (largest train size)"][2] == "0.6 (mean of 1 seed)"
    invalid = "SST-2 text-to-text outputs that are no label word (pretrained, random; mean over seeds)"
    assert table[invalid] == ["n/a", "n/a", "0.15, 0.5"]
    config = load_config(PipelineConfig, CONFIGS / "paradigms-tiny.yaml")
    assert lab_blocks(config, branches, None, "x.png")[2] == ("table", (headers, rows))
