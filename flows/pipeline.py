"""The end-to-end Prefect flow. Tasks are thin wrappers over `flows.steps`.

The flow's parameters are typed (`config: PipelineConfig`), so a deployment's "Custom run" form in
the Prefect UI shows the config's sections and fields. Prefect does not validate them
(`validate_parameters=False`): the flow validates the config itself, so a bad value fails the run with
the same message `lmforge run` prints for it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from openlineage.client.event_v2 import RunState
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal

from lmforge.app.config import PipelineConfig, resolve_inputs
from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.core.logs import enable_info_logs, get_logger, log_to_file
from lmforge.flows import steps
from lmforge.flows.run_record import CANCELLED, COMPLETED, FAILED, RunRecord, new_run_id
from lmforge.infra import progress
from lmforge.infra.progress import ProgressListener, ProgressRelay, ProgressUpdate
from lmforge.infra.ray_runtime import ensure_ray, plan_ray, shutdown_ray
from lmforge.infra.stage_runner import WOULD_REUSE, ReuseProbe, StageOutcome
from lmforge.infra.store import default_store_location

log = get_logger(__name__)
FLOW_NAME = "lmforge-pipeline"
# Stages that report progress while they run; each gets a progress artifact in the UI.
PROGRESS_STAGES = ("pretrain", "finetune/")
# How often a stage's progress artifact is updated at most (each update is an API call).
ARTIFACT_UPDATE_SECONDS = 2.0


def _watched(
    stage: str, step: Callable[..., StageOutcome], ctx: steps.RunContext, *args: Any
) -> StageOutcome:
    """Run one step, telling progress listeners when it starts and ends; then its UI artifacts."""
    progress.stage_started(stage)
    try:
        outcome = step(ctx, *args)
    except BaseException as err:
        progress.stage_finished(stage, FAILED, f"{type(err).__name__}: {err}")
        raise
    if ctx.progress is not None:
        ctx.progress.flush()  # the stage's last report before its end
    progress.stage_finished(stage, outcome.status, outcome.artifact_id)
    try:
        _publish_stage_artifacts(ctx.config.name, outcome)
    except Exception as err:  # the stage's artifact is safely in the store: a UI hiccup must not fail it
        log.warning("%s: could not publish its Prefect artifacts: %s", stage, err)
    return outcome


# Reuse is decided by the artifact store's recipe lookup (content hashes), not Prefect's cache,
# whose default policy never hits across runs: every stage task has cache_policy=NO_CACHE.
@task(name="clean", cache_policy=NO_CACHE)
def clean_task(ctx: steps.RunContext) -> StageOutcome:
    return _watched("clean", steps.clean_step, ctx)


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def tokenizer_task(ctx: steps.RunContext, cleaned: StageOutcome) -> StageOutcome:
    return _watched("tokenizer", steps.tokenizer_step, ctx, cleaned)


@task(name="shard", cache_policy=NO_CACHE)
def shard_task(ctx: steps.RunContext, cleaned: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    return _watched("shard", steps.shard_step, ctx, cleaned, tokenizer)


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(ctx: steps.RunContext, shards: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    return _watched("pretrain", steps.pretrain_step, ctx, shards, tokenizer)


@task(name="finetune", task_run_name="finetune-{task_config.id}-{cell.label}-{init}", cache_policy=NO_CACHE)
def finetune_task(
    ctx: steps.RunContext, task_config: Any, cell: Any, init: str, model: StageOutcome
) -> StageOutcome:
    stage = steps.finetune_stage(task_config, cell, init)
    return _watched(stage, steps.finetune_step, ctx, task_config, cell, init, model)


@task(name="evaluate", task_run_name="eval-{task_config.id}", cache_policy=NO_CACHE)
def eval_task(
    ctx: steps.RunContext, task_config: Any, model: StageOutcome, shards: StageOutcome
) -> StageOutcome:
    return _watched(f"eval/{task_config.id}", steps.eval_step, ctx, task_config, model, shards)


@task(name="report", cache_policy=NO_CACHE)
def report_task(ctx: steps.RunContext, record: dict[str, Any]) -> StageOutcome:
    return _watched("report", steps.report_step, ctx, record)


def flow_run_name() -> str:
    """The run id: given, or `<config name>-<UTC time>-<random>` (also for scheduled runs)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    if parameters.get("run_id"):
        return str(parameters["run_id"])
    config = parameters.get("config")
    name = config.get("name") if isinstance(config, dict) else getattr(config, "name", None)
    return new_run_id(str(name or "run"))


@flow(name=FLOW_NAME, flow_run_name=flow_run_name, validate_parameters=False)
def pipeline_flow(
    config: PipelineConfig,
    run_id: str | None = None,
    store: str | None = None,
    force: str | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """Clean -> tokenizer -> shards -> pre-train -> (fine-tune x inits, evals) -> report.

    config: the pipeline config (as `lmforge run` reads it from YAML).
    run_id: the run's id in the store (default: the flow run's name).
    store: the artifact store root (default: config.store, $LMFORGE_STORE, ./lmforge-store).
    force: recompute this stage and every stage after it.
    stage: run only this stage and the stages it needs (reusing what the store holds); no report.
    """
    from prefect.runtime import flow_run

    enable_info_logs()  # a served run's process has no CLI to do it
    logger = get_run_logger()
    pipeline_config = as_pipeline_config(config)
    if pipeline_config.lab is not None:
        raise ConfigError(
            f"config {pipeline_config.name!r} has a lab: section: run it with `lmforge run` or the "
            "lmforge-paradigm-lab flow, or run one branch's config with this flow"
        )
    steps.forced_stages(force)
    planned = steps.stage_plan(stage)
    # Hub data sets are pinned to a commit once, here: every stage's recipe and reader see that one.
    pipeline_config = resolve_inputs(pipeline_config)
    run_id = run_id or flow_run.get_name() or new_run_id(pipeline_config.name)
    store_root = store or pipeline_config.store or default_store_location()
    ctx = steps.make_context(pipeline_config, store_root, run_id, force)
    record = RunRecord(
        ctx.store, run_id, pipeline_config.name, pipeline_config.model_dump(mode="json"), flow_run.get_id()
    )
    if stage is not None:
        # Stage names as run.json's "stages" holds them; finetune and eval stand for all their tasks.
        record.data["stage"] = stage
        record.data["skipped_stages"] = [
            name for name in (*steps.FORCEABLE_STAGES, "report") if name not in planned
        ]
        record.save()
    listener = PrefectArtifacts(pipeline_config.name)
    progress.add_listener(listener)
    lineage = ctx.runner.lineage
    lineage.pipeline_started(pipeline_config.name)
    logger.info("run %s: record at %s", run_id, record.path)
    if stage is not None:
        logger.info("--stage %s: running %s; skipping the rest", stage, ", ".join(planned))
    try:
        with log_to_file(record.path.parent / "flow.log"):
            # Started by the first stage that computes (on this thread: the sequential stages run
            # here, and the fan-out starts it before submitting); a fully reused run never does.
            plan_ray(pipeline_config.ray.address, pipeline_config.ray.num_cpus)
            with ProgressRelay(run_id) as relay:
                ctx.progress = relay
                _run_stages(ctx, record, planned)
                report = report_task(ctx, record.as_completed()) if "report" in planned else None
            if report is not None:
                record.stage_done(report)
                record.data["report"] = {
                    name: str(ctx.store.local_files(report.artifact_id) / file)
                    for name, file in report.metrics.items()
                }
                try:
                    _publish_report_artifacts(run_id, record.as_completed())
                except Exception as err:  # the report is in the store; the UI copy is a convenience
                    log.warning("could not publish the report's Prefect artifacts: %s", err)
    except BaseException as err:
        cancelled = is_cancellation(err)
        record.finish(CANCELLED if cancelled else FAILED, describe_stop(err))
        lineage.pipeline_finished(RunState.ABORT if cancelled else RunState.FAIL, err)
        lineage.close()
        if cancelled:
            # Ends this driver's Ray work: a local runtime stops, a cluster drops the job's tasks.
            shutdown_ray()
        raise
    finally:
        progress.remove_listener(listener)
    record.finish(COMPLETED)
    lineage.pipeline_finished(RunState.COMPLETE)
    lineage.close()
    report_path = record.data["report"]["markdown"] if record.data["report"] else "none (--stage run)"
    logger.info("run %s completed in %.0f s; report: %s", run_id, record.data["wall_seconds"], report_path)
    return record.data


def as_pipeline_config(config: Any) -> PipelineConfig:
    """The flow's `config` parameter as a PipelineConfig, validated with the messages `lmforge run`
    prints (a UI form or API call passes a plain mapping)."""
    if isinstance(config, PipelineConfig):
        return config
    if not isinstance(config, dict):
        raise ConfigError(f"flow parameter config: expected a mapping, got {type(config).__name__}")
    return validate_config(PipelineConfig, config, source="flow parameter config")


def is_cancellation(err: BaseException) -> bool:
    """Ctrl-C in a terminal, or the SIGTERM Prefect's runner sends when a run is cancelled."""
    return isinstance(err, KeyboardInterrupt | TerminationSignal | asyncio.CancelledError)


def describe_stop(err: BaseException) -> str:
    """What run.json says stopped a run."""
    if isinstance(err, KeyboardInterrupt):
        return "cancelled: interrupted (Ctrl-C)"
    if isinstance(err, TerminationSignal):
        return f"cancelled: signal {err.signal} (a cancel from the Prefect UI or API, or a kill of the run's process)"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    return f"{type(err).__name__}: {err}"


def _run_stages(ctx: steps.RunContext, record: RunRecord, planned: tuple[str, ...]) -> None:
    cleaned = clean_task(ctx)
    record.stage_done(cleaned)
    if "tokenizer" not in planned:
        return
    tokenizer = tokenizer_task(ctx, cleaned)
    record.stage_done(tokenizer)
    if "shard" not in planned:
        return
    shards = shard_task(ctx, cleaned, tokenizer)
    record.stage_done(shards)
    if "pretrain" not in planned:
        return
    model = pretrain_task(ctx, shards, tokenizer)
    record.stage_done(model)
    if "finetune" not in planned and "eval" not in planned:
        return
    # Fan out: submitted together; each does its heavy work in a Ray task, so they run concurrently.
    objective = ctx.config.pretrain.objective
    # Their recipes parse source code; do it here, once, not in the fan-out's threads (CPython
    # 3.11.7's ast.parse is not thread-safe).
    steps.prepare_fan_out(ctx)
    finetunes = [
        (task_config, cell, init)
        for task_config in ctx.config.finetune.tasks_for(objective)
        for cell in task_config.cells()
        for init in steps.FINETUNE_INITS
        if "finetune" in planned
    ]
    evals = [task_config for task_config in ctx.config.evaluation.tasks_for(objective) if "eval" in planned]
    if fan_out_computes(ctx, finetunes, evals, model, shards):
        # Ray (and the progress board) start here, on the flow's thread: starting them from the
        # fan-out's task threads is left to a stage found damaged after this check.
        if ctx.progress is not None:
            ctx.progress.start()
        else:
            ensure_ray()
    # Every cell of every fine-tune grid, both inits: Ray runs as many at once as it has CPUs for.
    # Evaluations go first: each is one long task (a perplexity pass over the validation split took
    # 100 s of the demo's fan-out), and started last it ran alone on one core while the other idled
    # (docs/benchmarks.md, fan-out). Results are still recorded fine-tunes first.
    eval_futures = [eval_task.submit(ctx, task_config, model, shards) for task_config in evals]
    futures = [
        finetune_task.submit(ctx, task_config, cell, init, model) for task_config, cell, init in finetunes
    ]
    futures += eval_futures
    errors = []
    for future in futures:
        try:
            record.stage_done(future.result())
        except Exception as err:  # collect every failure before stopping
            errors.append(err)
    if errors:
        raise errors[0]


def fan_out_computes(
    ctx: steps.RunContext,
    finetunes: list[tuple[Any, Any, str]],
    evals: list[Any],
    model: StageOutcome,
    shards: StageOutcome,
) -> bool:
    """Whether any fan-out stage lacks a stored artifact (asks each step's recipe, computes nothing)."""
    probe = dataclasses.replace(ctx, runner=ReuseProbe(ctx.runner))
    for task_config, cell, init in finetunes:
        if steps.finetune_step(probe, task_config, cell, init, model).status != WOULD_REUSE:
            return True
    return any(
        steps.eval_step(probe, task_config, model, shards).status != WOULD_REUSE for task_config in evals
    )


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from free-form parts."""
    text = "-".join(parts).lower()
    return "-".join(filter(None, "".join(ch if ch.isalnum() else "-" for ch in text).split("-")))


class PrefectArtifacts(ProgressListener):
    """Progress artifacts of the long stages of one flow run (notes reach the run's log through the
    relay's own logging, which runs in the flow's context).

    Each artifact is created in its stage's task (so the UI shows it on that task run) and updated
    from the progress relay's thread by id, at most every ARTIFACT_UPDATE_SECONDS.
    """

    def __init__(self, config_name: str) -> None:
        self.config_name = config_name
        self.artifacts: dict[str, UUID] = {}
        self.updated: dict[str, float] = {}
        self.lock = threading.Lock()

    def stage_started(self, stage: str) -> None:
        if not stage.startswith(PROGRESS_STAGES):
            return
        artifact = cast(
            UUID,
            create_progress_artifact(
                0.0, key=artifact_key(self.config_name, stage, "progress"), description=f"{stage}: starting"
            ),
        )
        with self.lock:
            self.artifacts[stage] = artifact

    def progress(self, update: ProgressUpdate) -> None:
        with self.lock:
            artifact = self.artifacts.get(update.stage)
            now = time.monotonic()
            if artifact is None or now - self.updated.get(update.stage, -1e9) < ARTIFACT_UPDATE_SECONDS:
                return
            self.updated[update.stage] = now
        update_progress_artifact(artifact, update.percent, description=f"{update.stage}: {update.describe()}")

    def stage_finished(self, stage: str, status: str, detail: str) -> None:
        with self.lock:
            artifact = self.artifacts.pop(stage, None)
        if artifact is not None and status != FAILED:
            update_progress_artifact(artifact, 100.0, description=f"{stage}: {status} {detail}")


def _publish_stage_artifacts(config_name: str, outcome: StageOutcome) -> None:
    """In the stage's task: a table of its key metrics and a markdown note of where its artifact is.

    Keys are per config and stage, so the UI's Artifacts page keeps each one's history across runs."""
    rows = [
        {"metric": "status", "value": outcome.status},
        {"metric": "artifact_id", "value": outcome.artifact_id},
        {"metric": "seconds", "value": f"{outcome.seconds:.1f}"},
    ]
    rows += [{"metric": name, "value": value} for name, value in key_metrics(outcome.metrics).items()]
    stage_key = artifact_key(config_name, outcome.stage)
    create_table_artifact(
        key=artifact_key(stage_key, "metrics"), table=rows, description=f"{outcome.stage}: key metrics"
    )
    create_markdown_artifact(
        key=artifact_key(stage_key, "artifact"),
        markdown=(
            f"### {outcome.stage}: `{outcome.artifact_id}` ({outcome.status})\n\n"
            f"Store path: `{outcome.path}`\n\n"
            f"Ancestry: `lmforge lineage {outcome.artifact_id}`; "
            f"integrity: `lmforge verify {outcome.artifact_id}`\n"
        ),
        description=f"{outcome.stage}: artifact {outcome.artifact_id}",
    )


def key_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar metrics, nested dicts flattened with dots; lists (curves, per-shot rows) left out."""
    flat: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(key_metrics(value, f"{prefix}{name}."))
        elif isinstance(value, float):
            flat[prefix + name] = f"{value:.6g}"
        elif isinstance(value, int | str | bool) or value is None:
            flat[prefix + name] = value
    return flat


def _publish_report_artifacts(run_id: str, record: dict[str, Any]) -> None:
    from lmforge.app.report import report_tables

    markdown, rows = report_tables(record)
    png = record["report"].get("png")
    if png and Path(png).is_file():
        # Inline, so the UI shows the curve without reaching the store's filesystem.
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        markdown += f"\n## Loss curves\n\n![loss curves](data:image/png;base64,{data})\n"
    key = artifact_key(str(record["config_name"]))
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=f"lmforge run {run_id}")
    create_table_artifact(key=f"{key}-stages", table=rows, description=f"lmforge run {run_id}: stages")
