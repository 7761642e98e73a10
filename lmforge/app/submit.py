"""Pipeline runs as Ray Jobs: `lmforge submit` stages a job (config + code) and `lmforge jobs` follows it.

The config is resolved here, exactly as `lmforge run` resolves it, and travels as YAML in the job's
working_dir next to a real copy of the lmforge package, so the cluster needs only our pinned
dependencies. The job's driver runs `python -m lmforge.app.cli run`; Ray puts the working_dir on the
import path of the driver and of every task, actor and Ray Train worker of the job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from ray.exceptions import RayError

from lmforge.core.errors import ConfigError, LmforgeError
from lmforge.infra.lineage import STAGED_CODE_VERSION, code_version
from lmforge.infra.store import check_store_location, is_url

if TYPE_CHECKING:
    from lmforge.app.config import PipelineConfig

DASHBOARD_ENV = "LMFORGE_RAY_DASHBOARD"
JOB_CONFIG_FILE = "lmforge-job.yaml"
# Passed to the job when set here: where data and the store are, the user's Prefect server, S3 setup.
FORWARDED_ENV = (
    "LMFORGE_DATA_DIR",
    "LMFORGE_STORE_OPTIONS",
    "PREFECT_API_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
FORWARDED_PREFIXES = ("AWS_ENDPOINT_URL",)
CONNECT_TIMEOUT_SECONDS = 5.0
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"  # read by Ray's job supervisor from the job's env_vars
STOP_WAIT_SECONDS = "60"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RAY_CLIENT_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)


class ClusterUnreachable(LmforgeError):
    """No Ray Jobs API answers at the given address."""

    exit_code = 2


@dataclass
class JobRequest:
    """What `lmforge submit` was asked to run."""

    config_path: Path
    overrides: Sequence[str] = ()
    store: str | None = None
    stage: str | None = None
    force: str | None = None
    env_names: Sequence[str] = ()


@dataclass
class JobSpec:
    """A resolved, staged job: what JobSubmissionClient.submit_job receives."""

    submission_id: str
    run_id: str
    store: str
    entrypoint: str
    env_vars: dict[str, str]
    working_dir: Path
    notes: list[str] = field(default_factory=list)

    def runtime_env(self) -> dict[str, Any]:
        return {"working_dir": str(self.working_dir), "env_vars": self.env_vars}


@contextmanager
def prepared_job(request: JobRequest, environ: dict[str, str] | None = None) -> Iterator[JobSpec]:
    """Resolve and check everything (ConfigError before anything is submitted), stage the working_dir
    in a temporary folder, and yield the job; the folder is removed afterwards (Ray has uploaded it)."""
    from lmforge.flows.run_record import new_run_id

    environ = dict(os.environ if environ is None else environ)
    config, notes = resolved_config(request)
    store, store_note = job_store(request.store or config.store or environ.get("LMFORGE_STORE"))
    notes += [store_note] if store_note else []
    notes += environment_notes(config, environ)
    env_vars = job_env_vars(store, request.env_names, environ)
    run_id = new_run_id(config.name)
    staging = Path(tempfile.mkdtemp(prefix="lmforge-job-"))
    try:
        stage_working_dir(job_config(config, store).model_dump(mode="json"), staging)
        yield JobSpec(
            submission_id=f"lmforge-{run_id}",
            run_id=run_id,
            store=store,
            entrypoint=job_entrypoint(run_id, store, request),
            env_vars=env_vars,
            working_dir=staging,
            notes=notes,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolved_config(request: JobRequest) -> tuple[PipelineConfig, list[str]]:
    """The config as `lmforge run` resolves it (overrides, checks, hub pins), and its fallback notes."""
    from lmforge.app.config import PipelineConfig, apply_hub_fallbacks, resolve_inputs
    from lmforge.core.configbase import load_config
    from lmforge.flows.steps import forced_stages, stage_plan

    config = load_config(PipelineConfig, request.config_path, request.overrides)
    forced_stages(request.force)
    stage_plan(request.stage)
    notes = [
        f"{fallback.key}: no local copy of {fallback.local!r}; reading {fallback.hub}"
        for fallback in apply_hub_fallbacks(config, config.resolved_data_dir())[1]
    ]
    return resolve_inputs(config), notes


def job_config(config: PipelineConfig, store: str) -> PipelineConfig:
    """The config the job runs: its store, an absolute data_dir (a relative one names a folder here,
    and the job runs elsewhere), and no ray.address (the job uses the cluster it runs on)."""
    data_dir = config.resolved_data_dir() if config.data_dir else None
    return config.model_copy(
        update={
            "data_dir": str(data_dir) if data_dir else None,
            "store": store,
            "ray": config.ray.model_copy(update={"address": None}),
        }
    )


def job_entrypoint(run_id: str, store: str, request: JobRequest) -> str:
    """`lmforge run` on the staged config, from the working_dir's copy of the package."""
    command = ["python", "-m", "lmforge.app.cli", "run", JOB_CONFIG_FILE]
    command += ["--store", store, "--run-id", run_id]
    command += ["--stage", request.stage] if request.stage else []
    command += ["--force", request.force] if request.force else []
    return shlex.join(command)


def environment_notes(config: PipelineConfig, environ: dict[str, str]) -> list[str]:
    """What in the config or this environment will not mean on the cluster what it means here."""
    notes = []
    prefect_host = urlsplit(environ.get("PREFECT_API_URL", "")).hostname
    if prefect_host in LOOPBACK_HOSTS:
        notes.append(
            f"note: PREFECT_API_URL names {prefect_host}: the job reaches that Prefect server only if "
            "its driver runs on this machine"
        )
    if config.ray.address:
        notes.append(
            f"ray.address {config.ray.address!r} ignored: the job runs on the cluster it is submitted to"
        )
    return notes


def job_store(store: str | None) -> tuple[str, str | None]:
    """The store the job writes to (a URL, or an absolute path), and a note for a local path."""
    if not store:
        raise ConfigError(
            "submit: no artifact store: pass --store URL_OR_PATH (or set the config's 'store' or "
            "$LMFORGE_STORE) naming a store every node of the cluster can reach"
        )
    if is_url(store):
        # Checked with this machine's credentials before anything is sent: a scheme without a
        # filesystem or a missing bucket is a `store:` config error here, not a failed job later.
        check_store_location(store)
        return store, None
    path = str(Path(store).expanduser().resolve())
    return path, f"warning: store {path} is a local path: every node of the cluster must see it at that path"


def job_env_vars(store: str, env_names: Sequence[str], environ: dict[str, str]) -> dict[str, str]:
    """The environment the job's driver and workers get: the store, the forwarded settings, --env names."""
    from lmforge.infra.ray_runtime import WORKER_ENV

    env = dict(WORKER_ENV)
    env["LMFORGE_STORE"] = store
    # `lmforge jobs stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default: 3):
    # time for the run to stop its Ray work and record the cancel in the store.
    env[STOP_WAIT_ENV] = environ.get(STOP_WAIT_ENV, STOP_WAIT_SECONDS)
    for name, value in environ.items():
        if name in FORWARDED_ENV or name.startswith(FORWARDED_PREFIXES):
            env[name] = value
    for name in env_names:
        if name not in environ:
            raise ConfigError(f"--env {name}: not set in this environment")
        env[name] = environ[name]
    return env


def stage_working_dir(config: dict[str, Any], dest: Path) -> None:
    """Write the job's working_dir: the lmforge package (symlinked stage folders copied as real
    folders, no bytecode) and the resolved config."""
    import lmforge

    package = Path(lmforge.__file__).parent
    shutil.copytree(
        package, dest / "lmforge", symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (dest / JOB_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    # The copy is not a git checkout: record the commit it was staged from for the run's lineage.
    # (source_sha256 is not copied: the job computes it from the files it runs.)
    version = {key: code_version()[key] for key in ("git_commit", "git_dirty")}
    (dest / "lmforge" / STAGED_CODE_VERSION).write_text(json.dumps(version) + "\n")


def submit(
    address: str | None, request: JobRequest, wait: bool = False, say: Callable[[str], None] = print
) -> int:
    """Submit the run as a Ray Job and print how to follow it; with `wait`, follow it to its end."""
    with prepared_job(request) as job:
        client = connect(address)
        for note in job.notes:
            say(note)
        with jobs_api(client):
            client.submit_job(
                entrypoint=job.entrypoint, runtime_env=job.runtime_env(), submission_id=job.submission_id
            )
    url = client.get_address()
    say(f"submitted Ray job {job.submission_id} to {url} (run id {job.run_id}, store {job.store})")
    say(f"  status: lmforge jobs status {job.submission_id} --address {url}")
    say(f"  logs:   lmforge jobs logs {job.submission_id} --follow --address {url}")
    say(f"  stop:   lmforge jobs stop {job.submission_id} --address {url}")
    say(f"  run:    lmforge runs --store {job.store}")
    if not wait:
        return 0
    return follow(client, job.submission_id, say)


def connect(address: str | None):
    """A JobSubmissionClient for the cluster at `address` ($LMFORGE_RAY_DASHBOARD), or ClusterUnreachable
    at once (one line) when nothing answers there."""
    address = address or os.environ.get(DASHBOARD_ENV)
    if not address:
        raise ConfigError(f"no Ray cluster named: pass --address http://HEAD:8265 or set ${DASHBOARD_ENV}")
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    try:
        # requests has no connect timeout here and would wait on an unroutable host: probe first.
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_SECONDS).close()
        from ray.job_submission import JobSubmissionClient

        for name in RAY_CLIENT_LOGGERS:  # their INFO lines ("Uploading package ...") are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
        return JobSubmissionClient(url)
    except (OSError, ValueError, RuntimeError, RayError) as err:
        raise ClusterUnreachable(f"no Ray cluster at {url} (Jobs API unreachable: {one_line(err)})") from None


@contextmanager
def jobs_api(client: Any) -> Iterator[None]:
    """Turn the Jobs API's refusals (unknown job, failed upload, auth) into one-line errors."""
    try:
        yield
    except (RuntimeError, RayError, OSError) as err:
        raise LmforgeError(f"Ray Jobs API at {client.get_address()}: {one_line(err)}") from None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def follow(client: Any, job_id: str, say: Callable[[str], None] = print) -> int:
    """Print the job's log as it grows until the job ends; 0 if it succeeded, else 1."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        with jobs_api(client):
            asyncio.run(tail())
    except KeyboardInterrupt:
        say(f"\nstopped following; the job keeps running (lmforge jobs stop {job_id} ends it)")
        raise
    with jobs_api(client):
        info = client.get_job_info(job_id)
    say(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0 if str(info.status) == "SUCCEEDED" else 1


def list_jobs(address: str | None) -> int:
    client = connect(address)
    with jobs_api(client):
        jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    print(f"{'JOB':<48} {'STATUS':<10} {'STARTED (UTC)':<20} {'ENDED (UTC)':<20}")
    for job in jobs:
        name = job.submission_id or job.job_id or "-"
        print(f"{name:<48} {job.status!s:<10} {utc(job.start_time):<20} {utc(job.end_time):<20}")
    return 0


def job_status(address: str | None, job_id: str) -> int:
    client = connect(address)
    with jobs_api(client):
        info = client.get_job_info(job_id)
    print(f"job {job_id}: {info.status}")
    print(f"  started: {utc(info.start_time)}  ended: {utc(info.end_time)}")
    print(f"  entrypoint: {info.entrypoint}")
    if info.message:
        print(f"  message: {info.message}")
    return 0


def job_logs(address: str | None, job_id: str, follow_logs: bool = False) -> int:
    client = connect(address)
    if follow_logs:
        return follow(client, job_id)
    with jobs_api(client):
        sys.stdout.write(client.get_job_logs(job_id))
    return 0


def stop_job(address: str | None, job_id: str) -> int:
    client = connect(address)
    with jobs_api(client):
        stopped = client.stop_job(job_id)
    print(f"job {job_id}: " + ("stop requested" if stopped else "not running; nothing to stop"))
    return 0


def utc(milliseconds: int | None) -> str:
    if not milliseconds:
        return "-"
    return dt.datetime.fromtimestamp(milliseconds / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
