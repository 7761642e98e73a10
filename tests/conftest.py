"""Shared fixtures: one Ray runtime and one Prefect server per test session (both are slow to start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.s3_server import moto_s3_server, s3_store_url  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data sets (../shared/data or $LMFORGE_DATA_DIR); tests needing them skip without."""
    env = os.environ.get("LMFORGE_DATA_DIR")
    path = Path(env) if env else SHARED_DATA
    if not (path / "enwiki_extract").is_dir():
        pytest.skip(f"real data not found at {path}")
    return path.resolve()


@pytest.fixture(scope="session")
def ray_runtime():
    """A local Ray runtime shared by every test that needs one."""
    from lmforge.infra.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port with a temporary home (SQLite), once per
    session; every flow run, deployment and runner in the tests talks to it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from lmforge.infra.prefect_server import PrefectServer, free_port

    home = tmp_path_factory.mktemp("prefect-home")
    with PrefectServer(home, port=free_port()) as server:
        saved = {name: os.environ.get(name) for name in server.environment()}
        os.environ.update(server.environment())  # for subprocesses (lmforge serve, the CLI)
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home)}):
                yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
