"""Fail-fast input checks for the task configs, run before any pipeline work starts."""

from __future__ import annotations

from pathlib import Path

from lmforge.core.configbase import StrictModel
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.tasks.config import EvaluationConfig, FinetuneConfig
from lmforge.tasks.data import SST2_HF_CONFIG, WIKITEXT_HF_CONFIG, parse_hf_uri


def task_paths(task: StrictModel) -> list[tuple[str, str]]:
    """(field, path-or-uri) of every data file one task config reads, fields in name order (an
    optional field left unset reads nothing)."""
    fields: tuple[str, ...] = getattr(type(task), "data_fields", ())
    return [(field, getattr(task, field)) for field in sorted(fields) if getattr(task, field) is not None]


def task_inputs(finetune: FinetuneConfig, evaluation: EvaluationConfig) -> list[tuple[str, str]]:
    """Every (config key, path-or-uri) the configured tasks read, for checks and lineage."""
    found: list[tuple[str, str]] = []
    for section, tasks in (("finetune", finetune.tasks), ("evaluation", evaluation.tasks)):
        for index, task in enumerate(tasks):
            found.extend((f"{section}.tasks[{index}].{field}", path) for field, path in task_paths(task))
    return found


def check_inputs(finetune: FinetuneConfig, evaluation: EvaluationConfig, data_dir: Path | None) -> None:
    """Raise ConfigError naming the key (e.g. `finetune.tasks[0].train_path`) for a missing local file."""
    for key, path in task_inputs(finetune, evaluation):
        if is_hf_uri(path):
            # Only the URI's shape can be checked offline; the hub is reached when the task runs.
            default_config = WIKITEXT_HF_CONFIG if key.endswith(".path") else SST2_HF_CONFIG
            parse_hf_uri(path, key, default_config, "validation")
        else:
            resolve_file(path, data_dir, key)
