"""The paradigm lab at tiny size: three branches through Prefect and Ray at one FLOP budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.app.config import PipelineConfig
from lmforge.core.configbase import load_config

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory, shared_data_dir, ray_runtime, prefect_server):
    import os

    from lmforge.flows.lab import paradigm_lab_flow

    os.environ["LMFORGE_DATA_DIR"] = str(shared_data_dir)
    store = tmp_path_factory.mktemp("lab") / "store"
    config = load_config(PipelineConfig, CONFIGS / "paradigms-tiny.yaml")
    record = paradigm_lab_flow(config=config.model_dump(mode="json"), run_id="lab", store=str(store))
    return config, record


def test_every_branch_ran_at_the_same_budget_from_shared_stages(lab_run):
    config, record = lab_run
    assert record["status"] == "completed" and record["branches"] == {
        name: f"lab-{name}" for name in ("mlm", "clm", "span")
    }
    stages = record["stages"]
    # One corpus and one tokenizer for all: the branches after the first reuse them.
    for shared in ("clean", "tokenizer"):
        assert len({stages[f"{branch}/{shared}"]["artifact_id"] for branch in record["branches"]}) == 1
    assert len({stages[f"{branch}/shard"]["artifact_id"] for branch in record["branches"]}) == 3
    budget = config.lab.compute_budget_flops
    for branch in record["branches"]:
        plan = stages[f"{branch}/pretrain"]["metrics"]["budget"]
        assert (
            plan["flops_per_step"] * plan["max_steps"]
            <= budget
            < plan["flops_per_step"] * (plan["max_steps"] + 1)
        )
        curve = stages[f"{branch}/pretrain"]["metrics"]["loss_curve"]
        assert curve[-1][0] == plan["max_steps"]
    # T5's loss-bearing tokens are its span targets: a fixed count per sequence, so per step exactly
    # batch x target length (at this size its decoder's few positions make a step cheaper than GPT's).
    from lmforge.training.span_corruption import raw_length_for

    span = stages["span/pretrain"]["metrics"]["budget"]
    target_length = raw_length_for(config.shard.seq_len, 0.15, 3.0)[1]
    assert (
        span["loss_tokens_per_step"]
        == config.pretrain.micro_batch_size * config.pretrain.num_workers * target_length
    )


def test_report_opens_with_a_measured_comparison_table(lab_run):
    _, record = lab_run
    report = Path(record["report"]["markdown"])
    text = report.read_text()
    assert text.startswith("# Paradigm lab: paradigms-tiny")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == "|  | mlm | clm | span |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table[1:]}
    for measured in (
        "parameters",
        "training FLOPs per step (measured)",
        "loss-bearing tokens per step",
        "training FLOPs per loss-bearing token",
        "inference FLOPs per generated token",
        "peak host memory per worker (GiB, RSS)",
        "validation loss (own objective)",
        "SST-2 fine-tune accuracy, pretrained init (largest train size)",
        "SST-2 fine-tune accuracy, random init (largest train size)",
    ):
        assert all(cell.strip(" |") != "n/a" for cell in rows[measured]), (measured, rows[measured])
    icl = rows["SST-2 ICL accuracy by k"]
    assert icl[0].strip(" |") == "n/a" and "k=0" in icl[1] and "k=0" in icl[2]
    perplexity = rows["WikiText-2 perplexity / pseudo-perplexity"]
    assert "pseudo-perplexity" in perplexity[0] and "(perplexity)" in perplexity[1]
    assert (report.parent / "loss_vs_flops.png").stat().st_size > 1000
    assert text.count(" -> ") >= 9  # three samples per branch
