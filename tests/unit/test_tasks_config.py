"""Task configs: unions built from the registries, validation messages name keys, input checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.tasks import EVAL_TASKS, FINETUNE_TASKS, EvaluationConfig, FinetuneConfig, check_inputs
from lmforge.tasks.config import (
    MlmAccuracyConfig,
    Sst2FinetuneConfig,
    Sst2IclConfig,
    WikitextPerplexityConfig,
)
from tests.unit.test_tasks_support import write_sst2, write_wikitext

pytestmark = pytest.mark.unit


def test_defaults_and_registries():
    assert [task.type for task in FinetuneConfig().tasks] == ["sst2"]
    assert [task.id for task in EvaluationConfig().tasks] == [
        "sst2_icl",
        "wikitext_perplexity",
        "mlm_accuracy",
    ]
    assert FINETUNE_TASKS["sst2"].applies_to == {"clm", "mlm", "mlm_nsp", "mlm_sop", "span"}
    assert EVAL_TASKS["sst2_icl"].applies_to == {"clm", "span"}
    assert EVAL_TASKS["wikitext_perplexity"].applies_to == {"clm"}
    assert EVAL_TASKS["wikitext_pseudo_perplexity"].applies_to == {"mlm", "mlm_nsp", "mlm_sop"}
    assert EVAL_TASKS["generation_samples"].applies_to == {"clm", "mlm", "mlm_nsp", "mlm_sop", "span"}
    assert EVAL_TASKS["mlm_accuracy"].applies_to == {"mlm"}
    assert [t.type for t in EvaluationConfig().tasks_for("mlm")] == ["mlm_accuracy"]
    assert [t.type for t in EvaluationConfig().tasks_for("clm")] == ["sst2_icl", "wikitext_perplexity"]
    assert FINETUNE_TASKS["classification"].applies_to == FINETUNE_TASKS["sst2"].applies_to
    assert Sst2FinetuneConfig().seeds == 3 and Sst2FinetuneConfig().train_sizes == ["all"]
    assert Sst2IclConfig().shots == [0, 1, 5]


def test_every_registered_name_validates_to_its_config_class():
    for registry, root in ((FINETUNE_TASKS, FinetuneConfig), (EVAL_TASKS, EvaluationConfig)):
        for name, spec in registry.items():
            fields = spec.config_cls.model_fields
            required = {
                name: "data.csv"
                for name in ("train_path", "path")
                if name in fields and fields[name].is_required()
            }
            if name == "multiple_choice":
                required["columns"] = {"context": "c", "options": ["a", "b"], "label": "l"}
            parsed = validate_config(root, {"tasks": [{"type": name, **required}]})
            assert type(parsed.tasks[0]) is spec.config_cls and parsed.tasks[0].id == name
            # `name` is the key's old spelling, still read.
            assert validate_config(root, {"tasks": [{"name": name, **required}]}) == parsed


def test_loading_configs_does_not_import_torch():
    # The CLI validates configs before any heavy work; task runners import torch on first run.
    code = "import sys, tasks; tasks.EvaluationConfig(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert EVAL_TASKS["wikitext_perplexity"].run.__name__ == "run_wikitext_perplexity"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"tasks": [{"name": "sst2_icl", "num_orderings": 2}]},
            "tasks.0.num_orderings: Value error, num_orderings must be at least 3",
        ),
        (
            {"tasks": [{"name": "nope"}]},
            "tasks.0: `type` must be one of the eval tasks: fill_mask_probes, generation_samples, icl_classification, mlm_accuracy, perplexity, sst2_icl, wikitext_perplexity, wikitext_pseudo_perplexity",
        ),
        ({"tasks": [{"name": "mlm_accuracy", "mask_prob": 0.1}]}, "unknown key 'tasks.0.mask_prob'"),
        ({"tasks": [{"name": "sst2_icl"}, {"name": "sst2_icl"}]}, "repeated: sst2_icl"),
        ({"tasks": [{"name": "sst2_icl", "template": "{text} is"}]}, "tasks.0.template"),
        ({"tasks": [{"name": "sst2_icl", "shots": [1, 1]}]}, "tasks.0.shots"),
        ({"tasks": [{"name": "sst2_icl", "label_words": {0: "bad"}}]}, "tasks.0.label_words"),
        (
            {"tasks": [{"name": "wikitext_perplexity", "max_length": 8, "stride": 9}]},
            "tasks.0: Value error, stride (9) must not exceed max_length (8)",
        ),
    ],
)
def test_invalid_evaluation_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        validate_config(EvaluationConfig, raw, source="evaluation")
    assert message in str(caught.value)


def test_invalid_finetune_config_names_the_key():
    with pytest.raises(ConfigError, match=r"tasks\.0\.warmup_fraction"):
        validate_config(FinetuneConfig, {"tasks": [{"name": "sst2", "warmup_fraction": 1.5}]})
    with pytest.raises(
        ConfigError,
        match=r"tasks\.0: `type` must be one of the finetune tasks: classification, extractive_qa, multiple_choice, sst2, token_classification",
    ):
        validate_config(FinetuneConfig, {"tasks": [{"type": "sst5"}]})
    with pytest.raises(ConfigError, match=r"missing required key 'tasks\.0\.train_path'"):
        validate_config(FinetuneConfig, {"tasks": [{"type": "classification"}]})
    with pytest.raises(ConfigError, match=r"task ids must be unique; repeated: sst2"):
        validate_config(FinetuneConfig, {"tasks": [{"type": "sst2"}, {"type": "sst2", "seeds": 1}]})
    # Several instances of one type under their own ids.
    two = validate_config(FinetuneConfig, {"tasks": [{"type": "sst2"}, {"type": "sst2", "id": "sst2_small"}]})
    assert [task.id for task in two.tasks] == ["sst2", "sst2_small"]


def test_check_inputs_names_the_missing_key(tmp_path):
    with pytest.raises(ConfigError, match=r"finetune\.tasks\[0\]\.dev_path: no file matches 'sst2/dev.tsv'"):
        check_inputs(FinetuneConfig(), EvaluationConfig(), tmp_path)
    write_sst2(tmp_path)
    with pytest.raises(ConfigError, match=r"evaluation\.tasks\[1\]\.path: no file matches"):
        check_inputs(FinetuneConfig(), EvaluationConfig(), tmp_path)
    write_wikitext(tmp_path)
    check_inputs(FinetuneConfig(), EvaluationConfig(), tmp_path)
    with pytest.raises(ConfigError, match=r"finetune\.tasks\[0\]\.dev_path: relative data path"):
        check_inputs(FinetuneConfig(), EvaluationConfig(), None)


def test_check_inputs_accepts_hub_uris_and_rejects_malformed_ones(tmp_path):
    hub = FinetuneConfig(
        tasks=[
            Sst2FinetuneConfig(train_path="hf://nyu-mll/glue", dev_path="hf://nyu-mll/glue?split=validation")
        ]
    )
    evaluation = EvaluationConfig(
        tasks=[WikitextPerplexityConfig(path="hf://Salesforce/wikitext"), MlmAccuracyConfig()]
    )
    check_inputs(hub, evaluation, None)
    bad = EvaluationConfig(tasks=[WikitextPerplexityConfig(path="hf://Salesforce/wikitext?splt=test")])
    with pytest.raises(ConfigError, match=r"evaluation\.tasks\[0\]\.path: .*unknown parameters: splt"):
        check_inputs(FinetuneConfig(tasks=[]), bad, None)


def test_spec_run_is_a_plain_function_ray_can_wrap():
    import inspect

    import ray

    for registry in (FINETUNE_TASKS, EVAL_TASKS):
        for _, spec in registry.items():
            assert inspect.isfunction(spec.run)
            ray.remote(spec.run)  # raises TypeError for bound methods and other callables


def test_specs_and_configs_pickle_for_ray_tasks():
    import pickle

    spec, config = EVAL_TASKS["sst2_icl"], EvaluationConfig()
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(config)) == config


def test_tasks_preset_shares_every_stage_before_the_fan_out_with_the_demo():
    """configs/tasks.yaml runs on the demo's stored model: its corpus, tokenizer, shard and
    pre-training settings (and seed) must stay identical to configs/demo.yaml's."""
    from pathlib import Path

    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    tasks, demo = (load_config(PipelineConfig, configs / f"{name}.yaml") for name in ("tasks", "demo"))
    for section in ("seed", "corpus", "tokenizer", "shard", "pretrain", "data_dir"):
        assert getattr(tasks, section) == getattr(demo, section), section
    types = {task.type for task in tasks.finetune.tasks} | {task.type for task in tasks.evaluation.tasks}
    assert {"sst2", "token_classification", "extractive_qa", "icl_classification", "perplexity"} <= types


def test_tasks_preset_reuses_every_fan_out_stage_of_the_demo():
    """Each of the demo's fine-tune cells and evaluations has the same recipe config in
    configs/tasks.yaml (the grid fields are operational, so a larger grid still matches)."""
    from dataclasses import asdict
    from pathlib import Path

    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import identity_view, load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    tasks, demo = (load_config(PipelineConfig, configs / f"{name}.yaml") for name in ("tasks", "demo"))

    def cells(config: PipelineConfig) -> set[str]:
        return {
            json.dumps([identity_view(task), asdict(cell)], sort_keys=True)
            for task in config.finetune.tasks
            for cell in task.cells()
        }

    def evals(config: PipelineConfig) -> set[str]:
        return {json.dumps(identity_view(task), sort_keys=True) for task in config.evaluation.tasks}

    assert cells(demo) and cells(demo) <= cells(tasks)
    assert evals(demo) and evals(demo) <= evals(tasks)
