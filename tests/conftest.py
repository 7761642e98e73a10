"""Shared fixtures: one Ray runtime and one Prefect harness per test session (both are slow to start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def prefect_harness(tmp_path_factory):
    """Prefect's test harness (temporary server, SQLite), once per session; never nest another."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
