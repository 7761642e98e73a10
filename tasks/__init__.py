"""Downstream work on a pretrained model: fine-tune tasks (sst2) and eval tasks (sst2_icl,
wikitext_perplexity, mlm_accuracy), each a registry entry keyed by its YAML name.

Importing this package is cheap (no torch/transformers); a task's runner module loads on first run.

    spec = FINETUNE_TASKS["sst2"]
    metrics = spec.run(config, model_dir, "pretrained", data_dir, output_dir, seed)
    for task in evaluation.tasks_for("clm"):
        EVAL_TASKS[task.name].run(task, model_dir, shards_dir, data_dir, output_dir, seed)
"""

from lmforge.tasks.config import EvaluationConfig, FinetuneConfig
from lmforge.tasks.inputs import check_inputs, task_inputs
from lmforge.tasks.specs import EVAL_TASKS, FINETUNE_TASKS, TaskSpec

__all__ = [
    "EVAL_TASKS",
    "FINETUNE_TASKS",
    "EvaluationConfig",
    "FinetuneConfig",
    "TaskSpec",
    "check_inputs",
    "task_inputs",
]
