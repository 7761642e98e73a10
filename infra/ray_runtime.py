"""Every Ray start-up and remote-call detail lives here."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from lmforge.core.logs import get_logger

log = get_logger(__name__)
R = TypeVar("R")

RAY_ADDRESS_ENV = "LMFORGE_RAY_ADDRESS"
# Set by the Ray Jobs supervisor for a job's driver (with RAY_ADDRESS, the cluster's GCS address).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Environment of every Ray worker of a run (a submitted job sets it in its runtime_env).
WORKER_ENV = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}
# The settings remote tasks need to open the same object store as the driver (no credentials).
STORE_ENV_NAMES = ("LMFORGE_STORE_OPTIONS", "AWS_REGION", "AWS_DEFAULT_REGION")
STORE_ENV_PREFIXES = ("AWS_ENDPOINT_URL",)


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@dataclass
class _Plan:
    """Where this process's runtime is to start: set by `plan_ray`, used by the first `ensure_ray()`."""

    address: str | None = None
    num_cpus: int | None = None


_plan = _Plan()
# Two fan-out threads may find Ray missing at once: one of them starts it.
_init_lock = threading.Lock()


def plan_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Say where Ray is to run without starting it: the first stage that needs it starts it there.

    A run whose every stage is reused never pays Ray's start-up (seconds on 2 cores).
    """
    _plan.address, _plan.num_cpus = address, num_cpus


def ray_initialized() -> bool:
    """Whether this process has a Ray runtime, without importing Ray when it has none."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def local_runtime_pending() -> bool:
    """True when Ray is not started yet and `ensure_ray()` would start a local runtime: its workers
    would run on this machine, with this process's environment."""
    return not ray_initialized() and cluster_address(_plan.address) is None


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster this process runs in as a Ray Job, else to `address` (or the planned
    one, or $LMFORGE_RAY_ADDRESS), else start an in-process local runtime (of `num_cpus`, or the
    planned count).

    Idempotent: an already initialised runtime is reused, so tests can share one.
    """
    if ray_initialized():
        return
    with _init_lock:
        import ray

        if ray.is_initialized():
            return
        address = cluster_address(address or _plan.address)
        with _signal_handlers_kept():
            _init(address, num_cpus if num_cpus is not None else _plan.num_cpus)
    from ray.data import DataContext

    # Deterministic block order: cleaning, dedup and packing outputs must not depend on scheduling.
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to connect to; None: start a local runtime.

    Inside a Ray Job the job's own cluster wins over a configured address: the job was submitted
    there, and its working_dir (our code) exists only there.
    """
    if os.environ.get(RAY_JOB_ENV):
        return os.environ.get("RAY_ADDRESS") or "auto"
    return address or os.environ.get(RAY_ADDRESS_ENV) or None


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Keep the caller's SIGTERM/SIGINT handlers across ray.init, which installs a SIGTERM handler
    that exits at once: Prefect's (a cancel raises TerminationSignal, so the run can record it and
    stop its Ray work) and Python's (Ctrl-C raises KeyboardInterrupt) must stay in charge."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)


def store_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The object-store settings set here that remote tasks must see too (endpoint, region, options)."""
    environ = dict(os.environ) if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if name in STORE_ENV_NAMES or name.startswith(STORE_ENV_PREFIXES)
    }


def _init(address: str | None, num_cpus: int | None) -> None:
    import ray

    runtime_env: dict[str, Any] | None = {"env_vars": dict(WORKER_ENV)}
    if os.environ.get(RAY_JOB_ENV):
        # A job's runtime_env (working_dir, env_vars incl. WORKER_ENV) already applies to all its
        # workers; ray.init refuses a second value for any of its keys.
        runtime_env = None
    if address:
        log.info("connecting to Ray cluster at %s", address)
        if runtime_env is not None:
            # Remote tasks open an object store themselves: they need its endpoint and options.
            # Credentials are not copied into the runtime_env (the dashboard shows it): give the
            # nodes their own, or use `lmforge submit --env NAME`.
            runtime_env["env_vars"].update(store_environment())
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        log.info("starting a local Ray runtime (num_cpus=%s)", num_cpus or "all")
        # Ray 2.60 turns token authentication on for a local runtime (writing ~/.ray/auth_token) and
        # warns that it did on every start; the runtime is ours alone, so the warning is noise.
        # (Setting RAY_AUTH_MODE here instead would come too late: Ray caches it at import.)
        logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
        # "local", not None: a RAY_ADDRESS in the user's shell (often the dashboard URL for
        # `ray job`) must not turn a local run into a connection attempt.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=False,
        )


def shutdown_ray() -> None:
    """Disconnect this driver: a runtime it started stops; on a cluster, the job's tasks and actors end."""
    import ray

    if ray.is_initialized():
        log.info("stopping this run's Ray work")
        ray.shutdown()


def run_remote(
    fn: Callable[..., R], *args: Any, num_cpus: float = 1, num_gpus: float = 0, **kwargs: Any
) -> R:
    """Run `fn(*args, **kwargs)` as a Ray task and wait for it (call from a thread to run several at once)."""
    import ray

    ensure_ray()
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
    return ray.get(remote.remote(*args, **kwargs))


def cluster_cpus() -> int:
    import ray

    ensure_ray()
    return int(ray.cluster_resources().get("CPU", 1))


def cuda_available_on_cluster() -> bool:
    import ray

    ensure_ray()
    return ray.cluster_resources().get("GPU", 0) > 0


def assigned_cpus(default: int = 1) -> int:
    """Whole CPUs Ray assigned to the calling task (at least 1); `default` outside a Ray task.

    A worker process outlives its tasks, so the OMP_NUM_THREADS Ray sets when it first runs one is
    not necessarily this task's share: a task reads its own here.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return default
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:  # the driver holds no task's resources
        return default
    return max(1, int(context.get_assigned_resources().get("CPU", 1)))
