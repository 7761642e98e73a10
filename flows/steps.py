"""Pipeline steps: each binds a library stage to the artifact store. Plain functions, no Prefect."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge import corpus, tasks, tokenization, training
from lmforge.app.config import PipelineConfig
from lmforge.core.errors import ConfigError
from lmforge.infra.code_identity import code_identity
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.infra.progress import ProgressRelay, ProgressTarget
from lmforge.infra.ray_runtime import assigned_cpus, run_remote
from lmforge.infra.stage_runner import StageOutcome, StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile, open_store

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


# What each stage reads, in pipeline order: `--stage NAME` runs NAME and everything it needs.
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "clean": (),
    "tokenizer": ("clean",),
    "shard": ("clean", "tokenizer"),
    "pretrain": ("clean", "tokenizer", "shard"),
    "finetune": ("clean", "tokenizer", "shard", "pretrain"),
    "eval": ("clean", "tokenizer", "shard", "pretrain"),
}
assert tuple(STAGE_NEEDS) == FORCEABLE_STAGES


def stage_plan(stage: str | None) -> tuple[str, ...]:
    """The stages a run executes: all of them, or `stage` and the stages it needs (then no report)."""
    if stage is None:
        return (*FORCEABLE_STAGES, "report")
    if stage not in STAGE_NEEDS:
        raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(FORCEABLE_STAGES)}")
    return (*STAGE_NEEDS[stage], stage)


def make_context(
    config: PipelineConfig, store_root: str | Path, run_id: str, force: str | None
) -> RunContext:
    store = open_store(store_root)
    runner = StageRunner(store, run_id, forced_stages(force))
    return RunContext(config, store, runner, config.resolved_data_dir(), run_id)


def own_code(step: str, *modules: str) -> tuple[str, ...]:
    """The code that shapes a stage: its library entry modules and the step function choosing its arguments."""
    return (*modules, f"{__name__}:{step}")


def clean_step(ctx: RunContext) -> StageOutcome:
    cfg = ctx.config.corpus
    refs = [*corpus.list_inputs(cfg, ctx.data_dir), *corpus.eval_set_inputs(cfg, ctx.data_dir)]
    inputs = [ExternalFile(ref.uri, ref.path) for ref in refs]
    return ctx.runner.run(
        "clean",
        "corpus",
        config=cfg,
        parents=[],
        code=own_code("clean_step", "lmforge.corpus"),
        external_files=inputs,
        compute=lambda out, work: corpus.clean_corpus(cfg, ctx.data_dir, out, work),
    )


def tokenizer_step(ctx: RunContext, cleaned: StageOutcome) -> StageOutcome:
    cfg = ctx.config.tokenizer
    return ctx.runner.run(
        "tokenizer",
        "tokenizer",
        config=cfg,
        parents=[cleaned.artifact_id],
        code=own_code("tokenizer_step", "lmforge.tokenization.train"),
        compute=lambda out, _work: tokenization.train_tokenizer(
            cfg, ctx.store.local_files(cleaned.artifact_id), out
        ),
    )


def shard_step(ctx: RunContext, cleaned: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    cfg = ctx.config.shard
    objective = training.get_objective(ctx.config.pretrain.objective)
    packing = objective.packing
    packing_options = objective.packing_options(ctx.config.pretrain, cfg.seq_len)
    return ctx.runner.run(
        "shard",
        "shards",
        config={"shard": cfg, "packing": packing, "packing_options": packing_options},
        parents=[cleaned.artifact_id, tokenizer.artifact_id],
        code=own_code("shard_step", "lmforge.tokenization.shard"),
        seed=ctx.config.seed,
        compute=lambda out, _work: tokenization.build_shards(
            cfg,
            packing,
            ctx.store.local_files(cleaned.artifact_id),
            ctx.store.local_files(tokenizer.artifact_id),
            out,
            ctx.config.seed,
            # Ray's tokenize tasks read the corpus from the store, not from this process's copy.
            corpus_location=ctx.store.data_location(cleaned.artifact_id),
            packing_options=packing_options,
        ),
    )


def pretrain_step(ctx: RunContext, shards: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    cfg = ctx.config.pretrain
    # Masking (span) settings only matter to objectives that mask (corrupt spans); recording the
    # defaults for the others keeps an MLM-only edit from retraining a causal model.
    objective = training.get_objective(cfg.objective)
    shaping = cfg.model_copy(
        update={
            **({} if objective.uses_masking else {"masking": training.MaskingConfig()}),
            **({} if objective.uses_span else {"span": training.SpanCorruptionConfig()}),
        }
    )
    # "auto" names a choice, not a setting: the recipe holds what the workers' hardware resolves it
    # to, so a store shared by machines of both CPU kinds never hands a bf16 model to an fp32 one,
    # nor a CPU-trained (unpadded, uncompiled) model to a GPU run. The model's input length is
    # shard.seq_len for every objective.
    precision = training.worker_precision(cfg)
    choices = cfg.device_choices(training.workers_use_gpu(cfg), ctx.config.shard.seq_len)
    recipe: dict[str, Any] = {"pretrain": shaping, "resolved": {"precision": precision.precision, **choices}}
    budget = None
    if cfg.compute_budget_flops is not None:
        # Matched compute: the steps a FLOP budget buys, from one measured step on these shards.
        budget = training.plan_budget(
            cfg,
            ctx.store.local_files(shards.artifact_id),
            ctx.store.local_files(tokenizer.artifact_id),
            ctx.config.seed,
        )
        steps = {"max_steps": budget.max_steps, "warmup_steps": budget.warmup_steps}
        cfg = cfg.model_copy(update=steps)
        recipe = {**recipe, "pretrain": shaping.model_copy(update=steps), "budget": budget.as_dict()}

    def compute(out: Path, work: Any) -> dict[str, Any]:
        summary = training.pretrain(
            cfg,
            ctx.store.local_files(shards.artifact_id),
            ctx.store.local_files(tokenizer.artifact_id),
            out,
            ctx.config.seed,
            # An object store's work area: Ray Train checkpoints there, where every node sees them.
            work_dir=ctx.store.arrow_path(work) if ctx.store.is_remote else work,
            storage_filesystem=ctx.store.arrow_filesystem(),
            # Workers on other nodes fetch the shards and tokenizer from the store, not from here.
            source=training.StoreInputs(ctx.store.location, shards.artifact_id, tokenizer.artifact_id)
            if ctx.store.is_remote
            else None,
            precision=precision,
            progress=ctx.progress_target("pretrain"),
        )
        return {**summary, "budget": budget.as_dict()} if budget is not None else summary

    return ctx.runner.run(
        "pretrain",
        "model",
        config=recipe,
        parents=[shards.artifact_id, tokenizer.artifact_id],
        code=own_code("pretrain_step", "lmforge.training.launcher"),
        seed=ctx.config.seed,
        compute=compute,
    )


def finetune_stage(task_config: Any, cell: Any, init: str) -> str:
    """`finetune/<task id>/<strategy>-<size>-s<seed index>/<init>`, e.g. finetune/sst2/finetune-2000-s0/random."""
    return f"finetune/{task_config.id}/{cell.label}/{init}"


def finetune_step(
    ctx: RunContext, task_config: Any, cell: Any, init: str, model: StageOutcome
) -> StageOutcome:
    """One cell of a fine-tune task's grid from one init. Its recipe holds the task config without
    the grid fields (which cells exist) plus the cell, so adding a seed or size reuses the others."""
    entry = tasks.FINETUNE_TASKS.get(task_config.type)
    config: dict[str, Any] = {"task": task_config, "cell": asdict(cell), "init": init}
    recipe_parents: list[str] | None = None
    if init == "random":
        # A random init reads the architecture and tokenizer files, never the trained weights: its
        # recipe names those files' hashes instead of the model's content id.
        config["architecture"] = architecture_files(ctx.store.get(model.artifact_id))
        recipe_parents = []
    stage = finetune_stage(task_config, cell, init)
    seed = cell.seed(ctx.config.seed)
    return ctx.runner.run(
        stage,
        "finetune",
        config=config,
        parents=[model.artifact_id],
        recipe_parents=recipe_parents,
        code=finetune_code(task_config),
        seed=seed,
        external_files=task_inputs(task_config, ctx.data_dir),
        forced_name="finetune",
        compute=lambda out, _work: _run_on_node(
            out,
            finetune_on_node,
            entry,
            ctx.store.location,
            model.artifact_id,
            task_config,
            cell,
            init,
            ctx.data_dir,
            seed,
            ctx.progress_target(stage),
        ),
    )


def eval_step(ctx: RunContext, task_config: Any, model: StageOutcome, shards: StageOutcome) -> StageOutcome:
    entry = tasks.EVAL_TASKS.get(task_config.type)
    return ctx.runner.run(
        f"eval/{task_config.id}",
        "evaluation",
        config=task_config,
        parents=[model.artifact_id, shards.artifact_id],
        code=eval_code(task_config),
        seed=ctx.config.seed,
        external_files=task_inputs(task_config, ctx.data_dir),
        forced_name="eval",
        compute=lambda out, _work: _run_on_node(
            out,
            eval_on_node,
            entry,
            ctx.store.location,
            model.artifact_id,
            shards.artifact_id,
            task_config,
            ctx.data_dir,
            ctx.config.seed,
        ),
    )


# Fan-out stages run as Ray tasks on any node. Nothing they read may come from this process's
# filesystem: they open the store by its location and fetch only the files they need into that
# node's cache (a fine-tune reads the model's hf/ folder, never its optimizer shards), write into a
# node-local folder, and hand the files back here, where the stage runner publishes them.


def _run_on_node(out: Path, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn(node_output_dir, *args)` as a Ray task; its output files are written into `out` here."""
    metrics, files = run_remote(_collect_output, fn, *args, num_cpus=1)
    for relative, payload in files.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
    return metrics


def _collect_output(fn: Callable[..., dict[str, Any]], *args: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tempfile.TemporaryDirectory(prefix="lmforge-stage-") as scratch, task_threads(assigned_cpus()):
        output_dir = Path(scratch)
        metrics = fn(output_dir, *args)
        files = {
            str(path.relative_to(output_dir)): path.read_bytes()
            for path in sorted(output_dir.rglob("*"))
            if path.is_file()
        }
    return metrics, files


@contextmanager
def task_threads(num_threads: int) -> Iterator[None]:
    """torch computes on `num_threads` intra-op threads (inter-op: 1) inside the block; restored after.

    Tasks sharing a node each get a CPU share: more threads than that oversubscribe the cores the
    other tasks compute on. Inter-op threads serve only `torch.jit.fork`; torch fixes their count
    at the first parallel work in a process, so it is set only where it still can be, and kept.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    if torch.get_num_interop_threads() != 1:
        with suppress(RuntimeError):  # the worker already ran inter-op work: its pool stays
            torch.set_num_interop_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def finetune_on_node(
    output_dir: Path,
    entry: Any,
    store_location: str,
    model_id: str,
    task_config: Any,
    cell: Any,
    init: str,
    data_dir: Path | None,
    seed: int,
    progress: ProgressTarget,
) -> dict[str, Any]:
    model_dir = open_store(store_location).local_files(model_id, "hf/") / "hf"
    return entry.run(task_config, cell, model_dir, init, data_dir, output_dir, seed, progress=progress)


def eval_on_node(
    output_dir: Path,
    entry: Any,
    store_location: str,
    model_id: str,
    shards_id: str,
    task_config: Any,
    data_dir: Path | None,
    seed: int,
) -> dict[str, Any]:
    store = open_store(store_location)
    model_dir = store.local_files(model_id, "hf/") / "hf"
    return entry.run(task_config, model_dir, store.local_files(shards_id), data_dir, output_dir, seed)


# Files of a pre-trained model's hf/ folder that hold what training learned (or how long it ran),
# as opposed to its architecture and tokenizer.
TRAINED_FILES = frozenset({"hf/model.safetensors", "hf/pytorch_model.bin", "hf/lmforge_pretrain.json"})


def prepare_fan_out(ctx: RunContext) -> None:
    """Compute (and cache) the code identity of every fan-out stage on the calling thread."""
    objective = ctx.config.pretrain.objective
    for finetune_config in ctx.config.finetune.tasks_for(objective):
        code_identity(finetune_code(finetune_config))
    for eval_config in ctx.config.evaluation.tasks_for(objective):
        code_identity(eval_code(eval_config))


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
    module = task_module(tasks.FINETUNE_TASKS.get(task_config.type))
    return (*own_code("finetune_step", module), f"{__name__}:finetune_on_node")


def eval_code(task_config: Any) -> tuple[str, ...]:
    module = task_module(tasks.EVAL_TASKS.get(task_config.type))
    return (*own_code("eval_step", module), f"{__name__}:eval_on_node")


def task_inputs(task_config: Any, data_dir: Path | None) -> list[ExternalFile]:
    """Raw data files a downstream task reads, for lineage (hub data sets by URI)."""
    from lmforge.tasks.inputs import task_paths

    return [
        ExternalFile(
            path, None if is_hf_uri(path) else resolve_file(path, data_dir, f"{task_config.id}.{field}")
        )
        for field, path in task_paths(task_config)
    ]


def report_step(ctx: RunContext, record: dict[str, Any]) -> StageOutcome:
    from lmforge.app.report import write_report

    parents = sorted(
        {stage["artifact_id"] for stage in record["stages"].values() if stage.get("artifact_id")}
    )

    def compute(out: Path, _work: str) -> dict[str, Any]:
        # The run's lineage graph: every stage's artifact down to the raw inputs, shared ones once.
        paths = write_report(record, out, [ctx.store.lineage(artifact_id) for artifact_id in parents])
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
