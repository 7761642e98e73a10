"""`lmforge harness` without lm-evaluation-harness: the prompts and task files it hands lm_eval, the
comparison it prints, finding a run's model, and the refusal (exit 2) when lm_eval is missing."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from lmforge.app.cli import main
from lmforge.app.harness import (
    HarnessConfig,
    HarnessUnavailable,
    Prompts,
    boundary_text,
    build_prompts,
    compare,
    require_lm_eval,
    run_model_dir,
    run_task_config,
    write_task,
)
from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.infra.store import ArtifactStore
from lmforge.tasks.config import Sst2IclConfig
from lmforge.tasks.data import LabelledText
from lmforge.tasks.icl import sample_demonstrations
from tests.unit.test_tasks_support import build_bpe_tokenizer

pytestmark = pytest.mark.unit

TRAIN = [LabelledText(f"train sentence {i}", i % 2) for i in range(10)]
DEV = [LabelledText("a dull , tedious mess", 0), LabelledText("a joy to watch", 1)]


def test_zero_shot_documents_hold_the_exact_prompt_and_label_continuations():
    prompts = build_prompts("sst2_icl", Sst2IclConfig(), TRAIN, DEV, 0, 1234, "<|endoftext|>")
    assert prompts.name == "lmforge_sst2_icl_k0"
    assert prompts.docs == [
        {
            "id": 0,
            "context": "<|endoftext|>Review: a dull , tedious mess\nSentiment:",
            "choices": [" negative", " positive"],
            "label": 0,
        },
        {
            "id": 1,
            "context": "<|endoftext|>Review: a joy to watch\nSentiment:",
            "choices": [" negative", " positive"],
            "label": 1,
        },
    ]
    assert prompts.queries == [row.text for row in DEV]


def test_one_shot_documents_use_the_runs_ordering_zero_demonstration():
    prompts = build_prompts("sst2_icl", Sst2IclConfig(), TRAIN, DEV, 1, 1234, "")
    (index,) = sample_demonstrations(TRAIN, 1, 1234, 0)
    demo = TRAIN[index]
    word = "positive" if demo.label else "negative"
    assert prompts.demonstration_indices == [index]
    assert prompts.demonstrations == [demo]
    assert prompts.docs[1]["context"] == (
        f"Review: {demo.text}\nSentiment: {word}\n\nReview: a joy to watch\nSentiment:"
    )


def test_label_words_and_template_come_from_the_task_config():
    config = Sst2IclConfig(template="Text: {text}\nAnswer:{label}", label_words={0: " bad", 1: " good"})
    prompts = build_prompts("sst2_icl", config, TRAIN, DEV[:1], 0, 0, "")
    assert prompts.docs[0]["context"] == "Text: a dull , tedious mess\nAnswer:"
    assert prompts.docs[0]["choices"] == [" bad", " good"]


def test_written_task_is_a_local_multiple_choice_task_over_the_jsonl(tmp_path):
    prompts = build_prompts("sst2_icl", Sst2IclConfig(), TRAIN, DEV, 0, 1234, "<|endoftext|>")
    write_task(tmp_path, "sst2_icl.yaml", prompts)
    task = yaml.safe_load((tmp_path / "lmforge_sst2_icl_k0.yaml").read_text())
    data_file = tmp_path / "lmforge_sst2_icl_k0.jsonl"
    assert task["task"] == "lmforge_sst2_icl_k0"
    assert task["dataset_path"] == "json"
    assert task["dataset_kwargs"]["data_files"] == {"test": str(data_file)}
    assert task["dataset_kwargs"]["cache_dir"] == str(tmp_path / "datasets_cache")
    assert task["test_split"] == "test"
    assert task["output_type"] == "multiple_choice"
    # Fields named directly (no Jinja), choices with their leading space, no few-shot sampling.
    assert (task["doc_to_text"], task["doc_to_choice"], task["doc_to_target"]) == (
        "context",
        "choices",
        "label",
    )
    assert task["target_delimiter"] == ""
    assert task["num_fewshot"] == 0
    assert [metric["metric"] for metric in task["metric_list"]] == ["acc"]
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert rows == prompts.docs


def prompts_of(labels: list[int]) -> Prompts:
    docs = [
        {"id": i, "context": "", "choices": [" negative", " positive"], "label": g}
        for i, g in enumerate(labels)
    ]
    return Prompts("t", 0, [], [], [], docs)


def test_compare_reports_both_accuracies_difference_and_disagreements():
    ours = [[-1.0, -2.0], [-3.0, -1.0], [-1.0, -1.5], [-2.0, -1.0]]  # predicts 0, 1, 0, 1
    theirs = [[-1.0, -2.0], [-3.0, -1.0], [-1.6, -1.5], [-2.0, -1.0]]  # predicts 0, 1, 1, 1
    row = compare(prompts_of([0, 1, 0, 0]), ours, (0.5, theirs), 0)
    assert row["lmforge_accuracy"] == 0.75
    assert row["lm_eval_accuracy"] == 0.5  # lm_eval's own metric, as reported
    assert row["difference_points"] == pytest.approx(-25.0)
    assert row["num_prediction_disagreements"] == 1
    assert row["max_abs_log_likelihood_difference"] == pytest.approx(0.6)
    assert row["num_examples"] == 4
    assert row["lmforge_prediction_counts"] == [2, 2]


def write_run(store: ArtifactStore, run_id: str, record: dict) -> None:
    store.write_run_record(run_id, {"run_id": run_id, "status": "completed", **record})


def test_run_model_dir_is_the_pretrain_artifacts_hf_folder(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    write_run(store, "run-a", {"stages": {"pretrain": {"artifact_id": "model-1"}}})
    write_run(store, "run-b", {"stages": {"clean": {"artifact_id": "clean-1"}}})
    _, model_dir = run_model_dir(store, "run-a")
    assert model_dir == store.data_path("model-1") / "hf"
    with pytest.raises(ArtifactError, match="run-b has no readable pretrain stage"):
        run_model_dir(store, "run-b")
    with pytest.raises(ConfigError, match="no run 'run-c'.*run-a, run-b"):
        run_model_dir(store, "run-c")


def test_run_task_config_reads_the_runs_own_task_settings():
    record = {
        "config": {
            "evaluation": {
                "tasks": [
                    {"name": "wikitext_perplexity"},
                    {"name": "sst2_icl", "max_examples": 48, "label_words": {"0": "bad", "1": "good"}},
                ]
            }
        }
    }
    config = run_task_config(record, "sst2_icl", Sst2IclConfig)
    assert (config.max_examples, config.label_words) == (48, {0: "bad", 1: "good"})
    assert run_task_config({"config": {}}, "sst2_icl", Sst2IclConfig) == Sst2IclConfig()
    stale = {"config": {"evaluation": {"tasks": [{"type": "sst2_icl", "no_such_key": 1}]}}}
    with pytest.raises(ConfigError, match="no longer validates"):
        run_task_config(stale, "sst2_icl", Sst2IclConfig)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"shots": [0, 0]}, "distinct non-negative"),
        ({"shots": [-1]}, "distinct non-negative"),
        ({"limit": 0}, "limit must be at least 1"),
        ({"tasks": []}, "at least one task"),
    ],
)
def test_config_rejects_unusable_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        HarnessConfig(run_id="run-a", **changes)


def hide_lm_eval(monkeypatch):
    # None in sys.modules makes `import lm_eval` raise ImportError, installed or not.
    for name in ("lm_eval", "lm_eval.models", "lm_eval.models.huggingface"):
        monkeypatch.setitem(sys.modules, name, None)


def test_cli_refuses_with_exit_2_and_the_install_command_without_lm_eval(tmp_path, monkeypatch, capsys):
    hide_lm_eval(monkeypatch)
    with pytest.raises(HarnessUnavailable):  # the plain function raises; the CLI maps it to exit 2
        require_lm_eval()
    code = main(["harness", "run-a", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2
    assert "lm-evaluation-harness is not importable" in err
    assert "pip install 'lmforge[harness]'" in err
    assert not (tmp_path / "store" / "runs" / "run-a").exists()


def test_cli_rejects_bad_shots_and_unknown_tasks(tmp_path, monkeypatch, capsys):
    assert main(["harness", "run-a", "--shots", "0,x", "--store", str(tmp_path)]) == 2
    assert "--shots" in capsys.readouterr().err
    monkeypatch.setattr("lmforge.app.harness.require_lm_eval", lambda: "test")
    assert main(["harness", "run-a", "--tasks", "sst2_icx", "--store", str(tmp_path)]) == 2
    assert "sst2_icl" in capsys.readouterr().err


def test_boundary_text_is_read_back_as_the_boundary_token(tmp_path):
    tokenizer = build_bpe_tokenizer(tmp_path)
    assert boundary_text(tokenizer) == "<|endoftext|>"
    # A boundary token whose text the tokenizer reads otherwise (byte-level "Ġnegative") could not
    # stand in the harness's context.
    (negative,) = tokenizer(" negative", add_special_tokens=False)["input_ids"]
    tokenizer.eos_token = tokenizer.bos_token = tokenizer.convert_ids_to_tokens(negative)
    with pytest.raises(ArtifactError, match="does not read"):
        boundary_text(tokenizer)
