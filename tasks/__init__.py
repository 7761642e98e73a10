"""Downstream work on a pretrained model: fine-tune tasks (classification and its sst2 preset,
token_classification, extractive_qa, multiple_choice) and eval tasks (sst2_icl, wikitext_perplexity,
mlm_accuracy, ...), each a registry entry keyed by its YAML `type`.

Importing this package is cheap (no torch/transformers); a task's runner module loads on first run.

    for task in finetune.tasks_for("clm"):
        for cell in task.cells():
            FINETUNE_TASKS[task.type].run(task, cell, model_dir, "pretrained", data_dir, output_dir, cell.seed(seed))
    for task in evaluation.tasks_for("clm"):
        EVAL_TASKS[task.type].run(task, model_dir, shards_dir, data_dir, output_dir, seed)
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
