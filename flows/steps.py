"""Pipeline steps: each binds a library stage to the artifact store. Plain functions, no Prefect."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge import corpus, tasks, tokenization, training
from lmforge.app.config import PipelineConfig
from lmforge.core.errors import ConfigError
from lmforge.infra.code_identity import code_identity
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.infra.progress import ProgressRelay, ProgressTarget
from lmforge.infra.ray_runtime import run_remote
from lmforge.infra.stage_runner import StageOutcome, StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile

# Stages in pipeline order; `--force NAME` recomputes NAME and everything after it.
FORCEABLE_STAGES = ("clean", "tokenizer", "shard", "pretrain", "finetune", "eval")
FINETUNE_INITS = ("pretrained", "random")


@dataclass
class RunContext:
    config: PipelineConfig
    store: ArtifactStore
    runner: StageRunner
    data_dir: Path | None
    run_id: str
    # The run's progress board (None: long stages report to this process's listeners).
    progress: ProgressRelay | None = None

    def progress_target(self, stage: str) -> ProgressTarget:
        return self.progress.target(stage) if self.progress is not None else ProgressTarget(stage)


def forced_stages(force: str | None) -> set[str]:
    if force is None:
        return set()
    if force not in FORCEABLE_STAGES:
        raise ConfigError(f"--force {force!r}: expected one of {', '.join(FORCEABLE_STAGES)}")
    return set(FORCEABLE_STAGES[FORCEABLE_STAGES.index(force) :])


def make_context(
    config: PipelineConfig, store_root: str | Path, run_id: str, force: str | None
) -> RunContext:
    store = ArtifactStore(store_root)
    runner = StageRunner(store, run_id, forced_stages(force))
    return RunContext(config, store, runner, config.resolved_data_dir(), run_id)


def own_code(step: str, *modules: str) -> tuple[str, ...]:
    """The code that shapes a stage: its library entry modules and the step function choosing its arguments."""
    return (*modules, f"{__name__}:{step}")


def clean_step(ctx: RunContext) -> StageOutcome:
    cfg = ctx.config.corpus
    inputs = [ExternalFile(ref.uri, ref.path) for ref in corpus.list_inputs(cfg, ctx.data_dir)]
    return ctx.runner.run(
        "clean",
        "corpus",
        config=cfg,
        parents=[],
        code=own_code("clean_step", "lmforge.corpus"),
        external_files=inputs,
        compute=lambda out, _work: corpus.clean_corpus(cfg, ctx.data_dir, out),
    )


def tokenizer_step(ctx: RunContext, cleaned: StageOutcome) -> StageOutcome:
    cfg = ctx.config.tokenizer
    return ctx.runner.run(
        "tokenizer",
        "tokenizer",
        config=cfg,
        parents=[cleaned.artifact_id],
        code=own_code("tokenizer_step", "lmforge.tokenization.train"),
        compute=lambda out, _work: tokenization.train_tokenizer(cfg, Path(cleaned.path), out),
    )


def shard_step(ctx: RunContext, cleaned: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    cfg = ctx.config.shard
    packing = training.get_objective(ctx.config.pretrain.objective).packing
    return ctx.runner.run(
        "shard",
        "shards",
        config={"shard": cfg, "packing": packing},
        parents=[cleaned.artifact_id, tokenizer.artifact_id],
        code=own_code("shard_step", "lmforge.tokenization.shard"),
        seed=ctx.config.seed,
        compute=lambda out, _work: tokenization.build_shards(
            cfg, packing, Path(cleaned.path), Path(tokenizer.path), out, ctx.config.seed
        ),
    )


def pretrain_step(ctx: RunContext, shards: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    cfg = ctx.config.pretrain
    # Masking settings only matter to objectives that mask; recording the defaults for the others
    # keeps an MLM-only edit from retraining a causal model.
    shaping = (
        cfg
        if training.get_objective(cfg.objective).uses_masking
        else cfg.model_copy(update={"masking": training.MaskingConfig()})
    )
    # "auto" names a choice, not a precision: the recipe holds what the workers' hardware resolves
    # it to, so a store shared by machines of both CPU kinds never hands a bf16 model to an fp32 one.
    precision = training.worker_precision(cfg)
    return ctx.runner.run(
        "pretrain",
        "model",
        config={"pretrain": shaping, "resolved_precision": precision.precision},
        parents=[shards.artifact_id, tokenizer.artifact_id],
        code=own_code("pretrain_step", "lmforge.training.launcher"),
        seed=ctx.config.seed,
        compute=lambda out, work: training.pretrain(
            cfg,
            Path(shards.path),
            Path(tokenizer.path),
            out,
            ctx.config.seed,
            work_dir=work,
            precision=precision,
            progress=ctx.progress_target("pretrain"),
        ),
    )


def finetune_step(ctx: RunContext, task_config: Any, init: str, model: StageOutcome) -> StageOutcome:
    entry = tasks.FINETUNE_TASKS.get(task_config.name)
    model_dir = Path(model.path) / "hf"
    config: dict[str, Any] = {"task": task_config, "init": init}
    recipe_parents: list[str] | None = None
    if init == "random":
        # A random init reads the architecture and tokenizer files, never the trained weights: its
        # recipe names those files' hashes instead of the model's content id.
        config["architecture"] = architecture_files(ctx.store.get(model.artifact_id))
        recipe_parents = []
    stage = f"finetune/{task_config.name}/{init}"
    return ctx.runner.run(
        stage,
        "finetune",
        config=config,
        parents=[model.artifact_id],
        recipe_parents=recipe_parents,
        code=finetune_code(task_config),
        seed=ctx.config.seed,
        external_files=task_inputs(task_config, ctx.data_dir),
        forced_name="finetune",
        compute=lambda out, _work: run_remote(
            entry.run,
            task_config,
            model_dir,
            init,
            ctx.data_dir,
            out,
            ctx.config.seed,
            progress=ctx.progress_target(stage),
            num_cpus=1,
        ),
    )


def eval_step(ctx: RunContext, task_config: Any, model: StageOutcome, shards: StageOutcome) -> StageOutcome:
    entry = tasks.EVAL_TASKS.get(task_config.name)
    model_dir = Path(model.path) / "hf"
    return ctx.runner.run(
        f"eval/{task_config.name}",
        "evaluation",
        config=task_config,
        parents=[model.artifact_id, shards.artifact_id],
        code=eval_code(task_config),
        seed=ctx.config.seed,
        external_files=task_inputs(task_config, ctx.data_dir),
        forced_name="eval",
        compute=lambda out, _work: run_remote(
            entry.run,
            task_config,
            model_dir,
            Path(shards.path),
            ctx.data_dir,
            out,
            ctx.config.seed,
            num_cpus=1,
        ),
    )


# Files of a pre-trained model's hf/ folder that hold what training learned (or how long it ran),
# as opposed to its architecture and tokenizer.
TRAINED_FILES = frozenset({"hf/model.safetensors", "hf/pytorch_model.bin", "hf/lmforge_pretrain.json"})


def prepare_fan_out(ctx: RunContext) -> None:
    """Compute (and cache) the code identity of every fan-out stage on the calling thread."""
    objective = ctx.config.pretrain.objective
    for task_config in ctx.config.finetune.tasks_for(objective):
        code_identity(finetune_code(task_config))
    for task_config in ctx.config.evaluation.tasks_for(objective):
        code_identity(eval_code(task_config))


def architecture_files(model_manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of the model's hf/ files other than its trained weights: config and tokenizer."""
    return {
        record["path"]: record["sha256"]
        for record in model_manifest["files"]
        if record["path"].startswith("hf/") and record["path"] not in TRAINED_FILES
    }


def task_module(entry: Any) -> str:
    """The module of a registered task's runner ("module:function")."""
    return str(entry.runner).partition(":")[0]


def finetune_code(task_config: Any) -> tuple[str, ...]:
    return own_code("finetune_step", task_module(tasks.FINETUNE_TASKS.get(task_config.name)))


def eval_code(task_config: Any) -> tuple[str, ...]:
    return own_code("eval_step", task_module(tasks.EVAL_TASKS.get(task_config.name)))


def task_inputs(task_config: Any, data_dir: Path | None) -> list[ExternalFile]:
    """Raw data files a downstream task reads, for lineage (hub data sets by URI)."""
    from lmforge.tasks.inputs import task_paths

    return [
        ExternalFile(
            path, None if is_hf_uri(path) else resolve_file(path, data_dir, f"{task_config.name}.{field}")
        )
        for field, path in task_paths(task_config)
    ]


def report_step(ctx: RunContext, record: dict[str, Any]) -> StageOutcome:
    from lmforge.app.report import write_report

    parents = sorted(
        {stage["artifact_id"] for stage in record["stages"].values() if stage.get("artifact_id")}
    )

    def compute(out: Path, _work: Path) -> dict[str, Any]:
        paths = write_report(record, out)
        return {name: Path(path).name for name, path in paths.items()}

    # A report describes one run (statuses, timings), so it is always written afresh.
    return ctx.runner.run(
        "report",
        "report",
        config={"run_id": ctx.run_id},
        parents=parents,
        code=own_code("report_step", "lmforge.app.report"),
        compute=compute,
        reuse=False,
    )
