"""The end-to-end Prefect flow. Tasks are thin wrappers over `flows.steps`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lmforge.app.config import PipelineConfig, check_inputs, pin_hub_revisions
from lmforge.flows import steps
from lmforge.flows.run_record import RunRecord
from lmforge.infra.ray_runtime import ensure_ray
from lmforge.infra.stage_runner import StageOutcome


# Reuse is decided by the artifact store's recipe lookup (content hashes), not Prefect's cache,
# whose default policy never hits across runs: every stage task has cache_policy=NO_CACHE.
@task(name="clean", cache_policy=NO_CACHE)
def clean_task(ctx: steps.RunContext) -> StageOutcome:
    return steps.clean_step(ctx)


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def tokenizer_task(ctx: steps.RunContext, cleaned: StageOutcome) -> StageOutcome:
    return steps.tokenizer_step(ctx, cleaned)


@task(name="shard", cache_policy=NO_CACHE)
def shard_task(ctx: steps.RunContext, cleaned: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    return steps.shard_step(ctx, cleaned, tokenizer)


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(ctx: steps.RunContext, shards: StageOutcome, tokenizer: StageOutcome) -> StageOutcome:
    return steps.pretrain_step(ctx, shards, tokenizer)


@task(name="finetune", task_run_name="finetune-{task_config.name}-{init}", cache_policy=NO_CACHE)
def finetune_task(ctx: steps.RunContext, task_config: Any, init: str, model: StageOutcome) -> StageOutcome:
    return steps.finetune_step(ctx, task_config, init, model)


@task(name="evaluate", task_run_name="eval-{task_config.name}", cache_policy=NO_CACHE)
def eval_task(
    ctx: steps.RunContext, task_config: Any, model: StageOutcome, shards: StageOutcome
) -> StageOutcome:
    return steps.eval_step(ctx, task_config, model, shards)


@task(name="report", cache_policy=NO_CACHE)
def report_task(ctx: steps.RunContext, record: dict[str, Any]) -> StageOutcome:
    return steps.report_step(ctx, record)


@flow(name="lmforge-pipeline", flow_run_name="{run_id}")
def pipeline_flow(
    config: dict[str, Any], run_id: str, store: str, force: str | None = None
) -> dict[str, Any]:
    """Clean -> tokenizer -> shards -> pre-train -> (fine-tune x inits, evals) -> report."""
    logger = get_run_logger()
    pipeline_config = PipelineConfig.model_validate(config)
    check_inputs(pipeline_config)
    # Hub data sets are pinned to a commit once, here: every stage's recipe and reader see that one.
    pipeline_config = pin_hub_revisions(pipeline_config)
    config = pipeline_config.model_dump(mode="json")
    ctx = steps.make_context(pipeline_config, store, run_id, force)
    record = RunRecord(ctx.store, run_id, pipeline_config.name, config)
    logger.info("run %s: record at %s", run_id, record.path)
    try:
        ensure_ray(pipeline_config.ray.address, pipeline_config.ray.num_cpus)
        _run_stages(ctx, record)
        report = report_task(ctx, record.as_completed())
        record.stage_done(report)
        record.data["report"] = {name: str(Path(report.path) / file) for name, file in report.metrics.items()}
        _publish_prefect_artifacts(run_id, record.data)
    except BaseException as err:
        record.finish("failed", f"{type(err).__name__}: {err}")
        raise
    record.finish("completed")
    logger.info(
        "run %s completed in %.0f s; report: %s",
        run_id,
        record.data["wall_seconds"],
        record.data["report"]["markdown"],
    )
    return record.data


def _run_stages(ctx: steps.RunContext, record: RunRecord) -> None:
    cleaned = clean_task(ctx)
    record.stage_done(cleaned)
    tokenizer = tokenizer_task(ctx, cleaned)
    record.stage_done(tokenizer)
    shards = shard_task(ctx, cleaned, tokenizer)
    record.stage_done(shards)
    model = pretrain_task(ctx, shards, tokenizer)
    record.stage_done(model)
    # Fan out: submitted together; each does its heavy work in a Ray task, so they run concurrently.
    objective = ctx.config.pretrain.objective
    # Their recipes parse source code; do it here, once, not in the fan-out's threads (CPython
    # 3.11.7's ast.parse is not thread-safe).
    steps.prepare_fan_out(ctx)
    futures = [
        finetune_task.submit(ctx, task_config, init, model)
        for task_config in ctx.config.finetune.tasks_for(objective)
        for init in steps.FINETUNE_INITS
    ]
    futures += [
        eval_task.submit(ctx, task_config, model, shards)
        for task_config in ctx.config.evaluation.tasks_for(objective)
    ]
    errors = []
    for future in futures:
        try:
            record.stage_done(future.result())
        except Exception as err:  # collect every failure before stopping
            errors.append(err)
    if errors:
        raise errors[0]


def _publish_prefect_artifacts(run_id: str, record: dict[str, Any]) -> None:
    from lmforge.app.report import report_tables

    markdown, rows = report_tables(record)
    key = "".join(ch if ch.isalnum() else "-" for ch in run_id.lower())
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=f"lmforge run {run_id}")
    create_table_artifact(key=f"{key}-stages", table=rows, description=f"lmforge run {run_id}: stages")
