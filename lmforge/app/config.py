"""The root pipeline config: one typed object per run, composed of each package's section."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel
from lmforge.core.errors import ConfigError
from lmforge.core.logs import get_logger
from lmforge.corpus import CorpusConfig, SourceConfig
from lmforge.corpus.decontam import EvalSetConfig
from lmforge.corpus.inputs import eval_set_key, source_key
from lmforge.infra.data_paths import (
    DATA_DIR_ENV,
    RevisionResolver,
    default_data_dir,
    hub_commit,
    hub_endpoint,
    is_hf_uri,
    local_data_found,
    pin_hub_uri,
    pin_hub_uris,
)
from lmforge.tasks.config import EvaluationConfig, FinetuneConfig, TaskConfig
from lmforge.tokenization import ShardConfig, TokenizerConfig
from lmforge.training import PretrainConfig, get_objective
from lmforge.training.objectives import sentinel_count_needed

log = get_logger(__name__)


class RayConfig(StrictModel):
    """Where heavy work runs. No address: an in-process local runtime (or $LMFORGE_RAY_ADDRESS)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)


class LabConfig(StrictModel):
    """The paradigm lab (`lab:` section): one pipeline per branch, all from this config, at matched
    compute. Each branch's overrides are merged into the rest of the config (e.g. `{pretrain:
    {objective: span}}`); its pre-training gets `compute_budget_flops` and derives its own max_steps
    from the measured FLOPs of one of its steps."""

    compute_budget_flops: float = Field(gt=0)
    branches: dict[str, dict[str, Any]] = Field(min_length=2)

    @model_validator(mode="after")
    def _branch_names(self) -> LabConfig:
        for name in self.branches:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
                raise ValueError(f"branches: name {name!r} must be lowercase letters, digits and dashes")
        return self


class PipelineConfig(StrictModel):
    """Everything one pipeline run needs; saved (resolved) inside every artifact it produces."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    seed: int = 0
    data_dir: str | None = None
    store: str | None = None
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    shard: ShardConfig = ShardConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    lab: LabConfig | None = None

    @model_validator(mode="after")
    def _branches_are_valid(self) -> PipelineConfig:
        if self.lab is not None:
            branch_configs(self)  # each branch validates as a pipeline of its own
        return self

    @model_validator(mode="after")
    def _tokenizer_fits_objective(self) -> PipelineConfig:
        from lmforge.tokenization import PACKINGS, TOKENIZER_ALGORITHMS

        objective = get_objective(self.pretrain.objective)
        needed = dict.fromkeys(
            [*objective.required_special, *PACKINGS.get(objective.packing).required_specials]
        )
        defined = TOKENIZER_ALGORITHMS.get(self.tokenizer.algorithm).special_tokens
        missing = [name for name in needed if name not in defined]
        if missing:
            usable = [
                name
                for name, algorithm in TOKENIZER_ALGORITHMS.items()
                if set(needed) <= set(algorithm.special_tokens)
            ]
            raise ValueError(
                f"pretrain.objective {self.pretrain.objective!r} needs the special tokens {list(needed)}; "
                f"tokenizer.algorithm {self.tokenizer.algorithm!r} lacks {missing} "
                f"(algorithms that have them: {', '.join(usable) or 'none'})"
            )
        if objective.uses_span and self.tokenizer.resolved_sentinels() == 0:
            usable = [
                name for name, algorithm in TOKENIZER_ALGORITHMS.items() if algorithm.supports_sentinels
            ]
            raise ValueError(
                f"pretrain.objective {self.pretrain.objective!r} replaces noise spans with sentinel tokens, "
                f"but tokenizer.algorithm {self.tokenizer.algorithm!r} with sentinels "
                f"{self.tokenizer.sentinels} has none (algorithms with sentinels: {', '.join(usable)})"
            )
        if objective.uses_span:
            options = objective.packing_options(self.pretrain, self.shard.seq_len)
            spans = sentinel_count_needed(objective, self.pretrain, options["raw_length"])
            if spans > self.tokenizer.resolved_sentinels():
                raise ValueError(
                    f"tokenizer.sentinels {self.tokenizer.resolved_sentinels()} is fewer than the {spans} "
                    f"noise spans a shard.seq_len {self.shard.seq_len} sequence gets; raise tokenizer.sentinels"
                )
        return self

    def resolved_data_dir(self) -> Path | None:
        """data_dir from the config (relative to the working directory), else $LMFORGE_DATA_DIR."""
        if self.data_dir:
            path = Path(self.data_dir).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"data_dir: {self.data_dir!r} is not a directory")
            return path
        return default_data_dir()


def branch_configs(config: PipelineConfig) -> dict[str, PipelineConfig]:
    """The lab's branches as pipeline configs named `<name>-<branch>`, with the lab's FLOP budget."""
    from lmforge.core.configbase import validate_config

    if config.lab is None:
        return {}
    base = config.model_dump(mode="json", exclude={"lab"})
    # The budget derives the steps. A dumped config (a flow parameter) carries max_steps at its
    # default, so only a value other than the default counts as set.
    default_steps = PretrainConfig.model_fields["max_steps"].default
    if config.pretrain.max_steps != default_steps:
        raise ConfigError("lab: pretrain.max_steps is derived from lab.compute_budget_flops; remove it")
    branches = {}
    for branch, overrides in config.lab.branches.items():
        if "max_steps" in (overrides.get("pretrain") or {}):
            raise ConfigError(
                f"lab.branches.{branch}: pretrain.max_steps is derived from lab.compute_budget_flops; remove it"
            )
        merged = deep_merge(base, overrides)
        merged["name"] = f"{config.name}-{branch}"
        merged.setdefault("pretrain", {})["compute_budget_flops"] = config.lab.compute_budget_flops
        branches[branch] = validate_config(PipelineConfig, merged, source=f"lab.branches.{branch}")
    return branches


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in: mappings recursively, anything else replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_inputs(config: PipelineConfig) -> None:
    """Fail before any work starts when a configured data path does not exist."""
    from lmforge import corpus, tasks

    data_dir = config.resolved_data_dir()
    corpus.check_inputs(config.corpus, data_dir)
    tasks.check_inputs(config.finetune, config.evaluation, data_dir)


@dataclass(frozen=True)
class Fallback:
    """A data path that found nothing locally, and the hub data set read instead."""

    key: str
    local: str
    hub: str


def resolve_inputs(config: PipelineConfig, resolver: RevisionResolver | None = None) -> PipelineConfig:
    """`config` ready to run: each data path that finds nothing locally replaced by its hub fallback,
    local inputs checked, and every hub data set pinned to the commit it names now. A data set it
    cannot provide is a ConfigError, one for all of them. Idempotent: a resolved config comes back
    unchanged without network."""
    data_dir = config.resolved_data_dir()
    config, fallbacks = apply_hub_fallbacks(config, data_dir)
    check_inputs(config)
    uris = dict(input_paths(config))
    pinned, failed = pin_hub_uris(uris, resolver or hub_commit)
    if failed:
        raise ConfigError(unreachable_message(failed, uris, fallbacks, data_dir))
    return _rewrite_paths(config, lambda key, path: pinned.get(key, path))


def apply_hub_fallbacks(
    config: PipelineConfig, data_dir: Path | None
) -> tuple[PipelineConfig, list[Fallback]]:
    """`config` with every local data path that matches nothing replaced by its `hub` fallback."""
    fallbacks: list[Fallback] = []

    def fall_back(key: str, local: str, hub: str) -> None:
        where = f"in {data_dir}" if data_dir is not None else f"no data directory set ({DATA_DIR_ENV})"
        log.info("%s: %r finds nothing (%s); reading the hub data set %s", key, local, where, hub)
        fallbacks.append(Fallback(key, local, hub))

    def source_or_hub(key: str, source: SourceConfig) -> SourceConfig:
        hub = source.hub_source()
        if hub is None or local_data_found(source.path, data_dir):
            return source
        fall_back(key, source.path, source_uri(hub))
        return hub

    def path_or_hub(key: str, task: TaskConfig, field: str, path: str) -> str:
        hub = task.hub.get(field)
        if hub is None or is_hf_uri(path) or local_data_found(path, data_dir):
            return path
        fall_back(key, path, hub)
        return hub

    def eval_set_or_hub(key: str, eval_set: EvalSetConfig) -> EvalSetConfig:
        hub = eval_set.hub_eval_set()
        if hub is None or is_hf_uri(eval_set.path) or local_data_found(eval_set.path, data_dir):
            return eval_set
        fall_back(key, eval_set.path, hub.path)
        return hub

    return _rewrite_inputs(config, source_or_hub, path_or_hub, eval_set_or_hub), fallbacks


def pin_hub_revisions(config: PipelineConfig, resolver: RevisionResolver = hub_commit) -> PipelineConfig:
    """`config` with every hf:// data set pinned to the hub commit it names now (hf://owner/name@sha),
    so recipes, lineage and readers all refer to the same bytes. No hf:// input: no network."""
    return _rewrite_paths(config, lambda key, path: pin_hub_uri(path, key, resolver))


def input_paths(config: PipelineConfig) -> list[tuple[str, str]]:
    """(config key, path or hf:// URI) of every data input: corpus sources, then task data fields."""
    from lmforge.tasks.inputs import task_inputs

    sources = [(source_key(index), source.path) for index, source in enumerate(config.corpus.sources)]
    decontamination = config.corpus.decontamination
    eval_sets = [
        (eval_set_key(index), eval_set.path)
        for index, eval_set in enumerate(decontamination.eval_sets if decontamination else [])
    ]
    return sources + eval_sets + task_inputs(config.finetune, config.evaluation)


def source_uri(source: SourceConfig) -> str:
    """A hub source as one URI, in the task syntax: hf://owner/name?config=..&split=.."""
    config_part = f"config={source.hf_name}&" if source.hf_name else ""
    return f"{source.path}?{config_part}split={source.hf_split}"


def unreachable_message(
    failed: dict[str, str], uris: dict[str, str], fallbacks: list[Fallback], data_dir: Path | None
) -> str:
    """One message for every input whose hub data set could not be pinned: its key, the hub name
    tried, the hub's error, and how to use local copies instead."""
    fell_back = {fallback.key: fallback for fallback in fallbacks if fallback.key in failed}
    reasons = set(failed.values())
    lines = [
        f"cannot read {len(failed)} input(s): the Hugging Face hub at {hub_endpoint()} could not be used"
    ]
    for key, reason in failed.items():
        fallback = fell_back.get(key)
        tried = f"{fallback.local!r} not found; tried {fallback.hub}" if fallback else f"tried {uris[key]}"
        lines.append(f"  {key}: {tried}" + (f" ({reason})" if len(reasons) > 1 else ""))
    if len(reasons) == 1:
        lines.append(f"  hub error: {reasons.pop()}")
    if fell_back:
        local = ", ".join(dict.fromkeys(fallback.local for fallback in fell_back.values()))
        where = f"the data directory is {data_dir}" if data_dir else "no data directory is set"
        lines.append(
            f"Without the hub: put local copies in one folder, at the paths the config names ({local}), "
            f"and set {DATA_DIR_ENV}=/path/to/that/folder or the config's data_dir ({where} now)."
        )
    if failed.keys() - fell_back.keys():
        lines.append("An hf:// input without a local copy: give its commit yourself, hf://owner/name@<sha>.")
    return "\n".join(lines)


def _rewrite_inputs(
    config: PipelineConfig,
    source_fn: Callable[[str, SourceConfig], SourceConfig],
    path_fn: Callable[[str, TaskConfig, str, str], str],
    eval_set_fn: Callable[[str, EvalSetConfig], EvalSetConfig],
) -> PipelineConfig:
    """`config` with each corpus source, decontamination eval set and task data field passed through
    the given functions."""
    from lmforge.tasks.inputs import task_paths

    sources = [source_fn(source_key(index), source) for index, source in enumerate(config.corpus.sources)]
    corpus_update: dict[str, Any] = {"sources": sources}
    if config.corpus.decontamination is not None:
        decontamination = config.corpus.decontamination
        eval_sets = [
            eval_set_fn(eval_set_key(index), item) for index, item in enumerate(decontamination.eval_sets)
        ]
        corpus_update["decontamination"] = decontamination.model_copy(update={"eval_sets": eval_sets})

    def rewritten(section: str, tasks: Sequence[TaskConfig]) -> list[Any]:
        return [
            task.model_copy(
                update={
                    field: path_fn(f"{section}.tasks[{index}].{field}", task, field, path)
                    for field, path in task_paths(task)
                }
            )
            for index, task in enumerate(tasks)
        ]

    return config.model_copy(
        update={
            "corpus": config.corpus.model_copy(update=corpus_update),
            "finetune": config.finetune.model_copy(
                update={"tasks": rewritten("finetune", config.finetune.tasks)}
            ),
            "evaluation": config.evaluation.model_copy(
                update={"tasks": rewritten("evaluation", config.evaluation.tasks)}
            ),
        }
    )


def _rewrite_paths(config: PipelineConfig, path_fn: Callable[[str, str], str]) -> PipelineConfig:
    """`config` with every data path (corpus source or task field) passed through `path_fn(key, path)`."""
    return _rewrite_inputs(
        config,
        lambda key, source: source.model_copy(update={"path": path_fn(key, source.path)}),
        lambda key, _task, _field, path: path_fn(key, path),
        lambda key, eval_set: eval_set.model_copy(update={"path": path_fn(key, eval_set.path)}),
    )
