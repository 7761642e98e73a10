"""Every Ray start-up and remote-call detail lives here."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from lmforge.core.logs import get_logger

log = get_logger(__name__)
R = TypeVar("R")

RAY_ADDRESS_ENV = "LMFORGE_RAY_ADDRESS"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or $LMFORGE_RAY_ADDRESS), else start an in-process local runtime.

    Idempotent: an already initialised runtime is reused, so tests can share one.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get(RAY_ADDRESS_ENV) or None
    with _signal_handlers_kept():
        _init(address, num_cpus)
    from ray.data import DataContext

    # Deterministic block order: cleaning, dedup and packing outputs must not depend on scheduling.
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False


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


def _init(address: str | None, num_cpus: int | None) -> None:
    import ray

    # Workers import our packages; make sure they see the same code the driver runs.
    runtime_env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        log.info("starting a local Ray runtime (num_cpus=%s)", num_cpus or "all")
        ray.init(
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
