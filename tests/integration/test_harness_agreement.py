"""lm-evaluation-harness and our SST-2 ICL scoring agree on the same prompts: `lmforge harness` on a
run whose pre-trained model is a tiny GPT-2, 100 real dev examples, k=0 and k=1.

lm_eval's HF wrapper tokenizes context + continuation together, batches without our shared-prefix
cache and computes its own log-softmax; equal prompts must give equal accuracies (within 0.5
points, i.e. no prediction flips at n=100) and log-likelihoods equal up to float32 rounding.
"""

from __future__ import annotations

import json

import pytest

from lmforge.app.cli import main
from lmforge.infra.store import ArtifactStore
from lmforge.tasks.config import Sst2IclConfig
from lmforge.tasks.data import read_sst2_tsv
from lmforge.tasks.icl import build_prompt, sample_demonstrations
from tests.unit.test_tasks_support import build_tiny_gpt2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUM_EXAMPLES = 100
SEED = 1234


@pytest.fixture(scope="module")
def lm_eval_version():
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as err:
        pytest.skip(f"lm-evaluation-harness is not importable ({err}); pip install 'lm_eval[hf]==0.4.13'")
    return lm_eval.__version__


def test_lm_eval_and_lmforge_agree_on_sst2_icl(lm_eval_version, shared_data_dir, tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    # Positions enough for every 1-shot prompt: a truncated prompt keeps a different window in each.
    build_tiny_gpt2(store.data_path("model-tiny") / "hf", n_positions=1024)
    store.write_run_record(
        "run-tiny",
        {
            "run_id": "run-tiny",
            "status": "completed",
            "config": {"seed": SEED, "data_dir": str(shared_data_dir), "evaluation": {"tasks": []}},
            "stages": {"pretrain": {"artifact_id": "model-tiny"}},
        },
    )
    argv = ["harness", "run-tiny", "--store", str(store.root), "--shots", "0,1", "--limit", str(NUM_EXAMPLES)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((store.run_dir("run-tiny") / "harness" / "harness.json").read_text())
    assert summary["lm_eval_version"] == lm_eval_version
    assert summary["boundary_token"] == "<|endoftext|>"
    results = summary["results"]
    assert sorted(results) == ["lmforge_sst2_icl_k0", "lmforge_sst2_icl_k1"]
    for name, row in results.items():
        print(
            f"{name}: n={row['num_examples']} lm_eval={row['lm_eval_accuracy']:.4f} "
            f"lmforge={row['lmforge_accuracy']:.4f} diff={row['difference_points']:+.2f} points "
            f"max|dLL|={row['max_abs_log_likelihood_difference']:.2e}"
        )
        assert row["num_examples"] == NUM_EXAMPLES
        assert row["num_truncated"] == 0
        assert abs(row["difference_points"]) <= 0.5
        assert row["num_prediction_disagreements"] == 0
        assert row["max_abs_log_likelihood_difference"] < 1e-4
        assert name in printed
        # Not a constant guesser: its predictions depend on the prompt, so they can disagree.
        assert min(row["lmforge_prediction_counts"]) > 0

    # What lm_eval read is our prompt: the run's ordering-0 demonstration, then the query.
    dev = read_sst2_tsv(shared_data_dir / "sst2" / "dev.tsv")[:NUM_EXAMPLES]
    train = read_sst2_tsv(shared_data_dir / "sst2" / "train.tsv")
    assert results["lmforge_sst2_icl_k1"]["demonstration_indices"] == sample_demonstrations(train, 1, SEED, 0)
    demonstrations = [train[i] for i in sample_demonstrations(train, 1, SEED, 0)]
    folder = store.run_dir("run-tiny") / "harness" / "lm_eval_tasks"
    docs = [json.loads(line) for line in (folder / "lmforge_sst2_icl_k1.jsonl").read_text().splitlines()]
    expected = [build_prompt(Sst2IclConfig(), demonstrations, row.text)[0] for row in dev]
    assert [doc["context"] for doc in docs] == ["<|endoftext|>" + context for context in expected]
    assert [doc["label"] for doc in docs] == [row.label for row in dev]
    assert not (folder / "datasets_cache").exists()
