"""Deployments of the pipeline flow on a Prefect server, and the runner that executes their runs.

`deploy` registers a deployment whose default parameters are one pipeline config (the UI's run form
starts from it) and whose schedule is a cron expression or an interval. `serve` rebuilds those
deployments from the server and runs `prefect.serve` over them: it executes their scheduled and
manual runs, each in a subprocess, and kills a run's process when it is cancelled from the UI.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from lmforge.app.config import PipelineConfig
from lmforge.core.errors import ConfigError
from lmforge.core.logs import get_logger
from lmforge.flows.pipeline import FLOW_NAME, pipeline_flow
from lmforge.infra.prefect_server import require_api_url
from lmforge.infra.store import default_store_location, is_url, local_path_of

log = get_logger(__name__)
TAG = "lmforge"


def deploy(
    config: PipelineConfig,
    name: str,
    *,
    cron: str | None = None,
    interval: float | None = None,
    store: str | None = None,
    description: str | None = None,
) -> UUID:
    """Create or update deployment `lmforge-pipeline/<name>`; returns its id."""
    require_api_url()
    if cron is not None and interval is not None:
        raise ConfigError("give --cron or --interval, not both")
    if cron is not None:
        _check_cron(cron)
    if interval is not None and interval <= 0:
        raise ConfigError(f"--interval {interval}: expected a positive number of seconds")
    # The store path as this machine resolves it now, so runs do not depend on the runner's cwd.
    location = store or config.store or default_store_location()
    store_root = str(location) if is_url(location) else str(local_path_of(location).expanduser().resolve())
    # Likewise the data directory: runs read the data this deploy checked, not whatever the runner's
    # environment names (or, with none, the hub fallbacks).
    data_dir = config.resolved_data_dir()
    if data_dir is not None:
        config = config.model_copy(update={"data_dir": str(data_dir)})
    deployment = _runner_deployment(
        name,
        parameters={"config": config.model_dump(mode="json"), "store": store_root},
        schedules=[_schedule(cron, interval)] if cron is not None or interval is not None else [],
        description=description or f"lmforge pipeline, config {config.name!r}, store {store_root}",
        tags=[TAG, config.name],
    )
    deployment_id = deployment.apply()
    log.info("deployed %s/%s (%s)", FLOW_NAME, name, deployment_id)
    return deployment_id


def serve(names: list[str]) -> None:
    """Execute the runs of the named deployments (all lmforge deployments when none), until Ctrl-C."""
    from prefect import serve as prefect_serve
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    require_api_url()
    found = read_deployments(names)
    if not found:
        wanted = ", ".join(names) if names else "any"
        raise ConfigError(
            f"no {FLOW_NAME} deployment named {wanted} on the server; create one with `lmforge deploy`"
        )
    deployments = [
        _runner_deployment(
            record.name,
            parameters=record.parameters,
            # Whole schedules: per-schedule parameters or slugs set in the UI survive a restart.
            schedules=[
                DeploymentScheduleCreate(
                    schedule=item.schedule,
                    active=item.active,
                    max_scheduled_runs=item.max_scheduled_runs,
                    parameters=item.parameters,
                    slug=item.slug,
                )
                for item in record.schedules
            ],
            description=record.description,
            tags=record.tags,
            concurrency_limit=record.concurrency_limit,
        )
        for record in found
    ]
    log.info("serving %s", ", ".join(f"{FLOW_NAME}/{record.name}" for record in found))
    prefect_serve(*deployments, print_starting_message=True)


def read_deployments(names: list[str]) -> list[Any]:
    """The server's deployments of the pipeline flow, restricted to `names` if given (all must exist)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import DeploymentSort

    with get_client(sync_client=True) as client:
        # limit and sort given: this server version rejects them as nulls.
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            sort=DeploymentSort.NAME_ASC,
            limit=200,
        )
    if not names:
        return list(found)
    by_name = {record.name: record for record in found}
    missing = [name for name in names if name not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none"
        raise ConfigError(f"no {FLOW_NAME} deployment named {', '.join(missing)} (deployed: {known})")
    return [by_name[name] for name in names]


def _runner_deployment(
    name: str,
    *,
    parameters: dict[str, Any],
    schedules: list[Any],
    description: str | None,
    tags: list[str],
    concurrency_limit: int | None = None,
) -> Any:
    from prefect.types.entrypoint import EntrypointType

    return pipeline_flow.to_deployment(
        name=name,
        parameters=parameters,
        schedules=schedules,
        description=description,
        tags=tags,
        concurrency_limit=concurrency_limit,
        # The flow validates its config and reports bad values with the config's own messages.
        enforce_parameter_schema=False,
        # Found by module path, so the runner does not depend on its working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _schedule(cron: str | None, interval: float | None) -> Any:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if cron is not None:
        return CronSchedule(cron=cron)
    assert interval is not None
    return IntervalSchedule(interval=dt.timedelta(seconds=interval))


def _check_cron(expression: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=expression)
    except ValidationError as err:
        reason = "; ".join(str(error["msg"]) for error in err.errors())
        raise ConfigError(f"--cron {expression!r}: not a valid cron expression ({reason})") from None
