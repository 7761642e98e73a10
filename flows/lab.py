"""The paradigm lab flow: one pipeline run per branch (subflows), then a comparison report.

Branches share what they can through the store: with the same corpus and tokenizer settings, the
clean and tokenizer stages run once and every other branch reuses them. Each branch's pre-training
derives its steps from the lab's FLOP budget (training/budget.py), so the comparison is at matched
compute. The lab run has its own run.json: its stages are the branches' stages, prefixed with the
branch name, plus the lab report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from lmforge.app.config import PipelineConfig, branch_configs, resolve_inputs
from lmforge.core.errors import ConfigError
from lmforge.core.logs import enable_info_logs
from lmforge.flows import steps
from lmforge.flows.pipeline import (
    as_pipeline_config,
    describe_stop,
    flow_run_name,
    is_cancellation,
    pipeline_flow,
)
from lmforge.flows.run_record import CANCELLED, COMPLETED, FAILED, RunRecord, new_run_id
from lmforge.infra.stage_runner import StageOutcome
from lmforge.infra.store import default_store_location

LAB_FLOW_NAME = "lmforge-paradigm-lab"


@flow(name=LAB_FLOW_NAME, flow_run_name=flow_run_name, validate_parameters=False)
def paradigm_lab_flow(
    config: PipelineConfig, run_id: str | None = None, store: str | None = None, force: str | None = None
) -> dict[str, Any]:
    """Pre-train every `lab.branches` entry at `lab.compute_budget_flops`, fine-tune and evaluate
    each, then write the comparison report.

    config: a pipeline config with a `lab:` section.
    run_id: the lab run's id (branches run as `<run_id>-<branch>`).
    store: the artifact store root (default: config.store, $LMFORGE_STORE, ./lmforge-store).
    force: recompute this stage and every stage after it, in every branch.
    """
    from prefect.runtime import flow_run

    enable_info_logs()
    logger = get_run_logger()
    lab_config = resolve_inputs(as_pipeline_config(config))
    if lab_config.lab is None:
        raise ConfigError(f"config {lab_config.name!r} has no lab: section; run it with the pipeline flow")
    run_id = run_id or flow_run.get_name() or new_run_id(lab_config.name)
    store_root = store or lab_config.store or default_store_location()
    ctx = steps.make_context(lab_config, store_root, run_id, force)
    record = RunRecord(
        ctx.store, run_id, lab_config.name, lab_config.model_dump(mode="json"), flow_run.get_id()
    )
    branches: dict[str, dict[str, Any]] = {}
    record.data["branches"] = {}
    try:
        for branch, branch_config in branch_configs(lab_config).items():
            branch_run = f"{run_id}-{branch}"
            logger.info("lab %s: branch %s (objective %s) as run %s", run_id, branch,
                        branch_config.pretrain.objective, branch_run)  # fmt: skip
            record.data["branches"][branch] = branch_run
            branch_record = pipeline_flow.with_options(flow_run_name=branch_run)(
                config=branch_config, run_id=branch_run, store=str(store_root), force=force
            )
            branches[branch] = branch_record
            for stage, value in branch_record["stages"].items():
                record.data["stages"][f"{branch}/{stage}"] = value
            record.save()
        report = lab_report_step(ctx, branches)
        record.stage_done(report)
        record.data["report"] = {
            name: str(ctx.store.local_files(report.artifact_id) / file)
            for name, file in report.metrics.items()
        }
    except BaseException as err:
        record.finish(CANCELLED if is_cancellation(err) else FAILED, describe_stop(err))
        raise
    record.finish(COMPLETED)
    logger.info("lab %s completed in %.0f s; report: %s", run_id, record.data["wall_seconds"],
                record.data["report"]["markdown"])  # fmt: skip
    return record.data


def lab_report_step(ctx: steps.RunContext, branches: dict[str, dict[str, Any]]) -> StageOutcome:
    """The comparison report as a `report` artifact whose parents are every branch's artifacts."""
    from lmforge.app.lab_report import write_lab_report

    parents = sorted(
        {
            stage["artifact_id"]
            for record in branches.values()
            for stage in record["stages"].values()
            if stage.get("artifact_id")
        }
    )

    def compute(out: Path, _work: str) -> dict[str, Any]:
        paths = write_lab_report(ctx.config, branches, ctx.store, out)
        return {name: Path(path).name for name, path in paths.items()}

    return ctx.runner.run(
        "report",
        "report",
        config={"run_id": ctx.run_id, "branches": sorted(branches)},
        parents=parents,
        code=("lmforge.app.lab_report", f"{__name__}:lab_report_step"),
        compute=compute,
        reuse=False,
    )
