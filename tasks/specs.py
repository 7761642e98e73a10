"""Task registries: one entry per task type used in YAML (`finetune.tasks[].type`, `evaluation.tasks[].type`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.core.configbase import StrictModel
from lmforge.core.registry import Registry


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its typed config, the pretraining objectives it applies to, and its runner.

    The runner is named as "module:function" and imported on first call, so that loading a config
    (CLI, flow planning) does not import torch and transformers. Specs are picklable for Ray tasks.
    """

    name: str
    config_cls: type[StrictModel]
    applies_to: frozenset[str]
    runner: str

    @property
    def run(self) -> Callable[..., dict[str, Any]]:
        """The runner itself, a module-level function: Ray's `remote` accepts functions, not bound methods."""
        module_name, _, function_name = self.runner.partition(":")
        return getattr(importlib.import_module(module_name), function_name)


class TaskRegistry(Registry[TaskSpec]):
    """A Registry that also supports `registry[name]` and registers a spec under its own name."""

    def __getitem__(self, name: str) -> TaskSpec:
        return self.get(name)

    def add(self, spec: TaskSpec) -> TaskSpec:
        return self.register(spec.name)(spec)

    def config_classes(self) -> list[type[StrictModel]]:
        return [spec.config_cls for _, spec in self.items()]


# Fine-tune runners: run(config, cell, model_dir, init, data_dir, output_dir, seed, progress=None) -> dict
FINETUNE_TASKS = TaskRegistry("finetune task")
# Eval runners: run(config, model_dir, shards_dir, data_dir, output_dir, seed) -> dict
EVAL_TASKS = TaskRegistry("eval task")
