"""Two `lmforge run configs/tiny.yaml` processes on one store, started together: each stage is
computed by one and reused by the other, and every artifact verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
# The console script of the interpreter running the tests (the project venv under make test).
LMFORGE = Path(sys.executable).parent / "lmforge"
RUN_NAMES = ("alpha", "beta")
RUN_TIMEOUT_S = 1800


def start_run(name: str, store: Path, tmp_path: Path, data_dir: Path) -> subprocess.Popen:
    """`lmforge run` in its own process, with its own Prefect home (its own temporary server)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / f"prefect-{name}"),
        "LMFORGE_DATA_DIR": str(data_dir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("LMFORGE_STORE", None)
    command = [
        str(LMFORGE),
        "run",
        "configs/tiny.yaml",
        "--store",
        str(store),
        "--run-id",
        f"concurrent-{name}",
    ]
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def lmforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LMFORGE), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def concurrent_runs(tmp_path_factory, shared_data_dir):
    if not LMFORGE.exists():
        pytest.skip(f"{LMFORGE} is not installed")
    tmp_path = tmp_path_factory.mktemp("concurrent")
    store = tmp_path / "store"
    processes = {name: start_run(name, store, tmp_path, shared_data_dir) for name in RUN_NAMES}
    for name, process in processes.items():
        code = process.wait(timeout=RUN_TIMEOUT_S)
        log = (tmp_path / f"{name}.log").read_text()
        assert code == 0, f"run {name} exited {code}:\n{log[-4000:]}"
    records = {
        name: json.loads((store / "runs" / f"concurrent-{name}" / "run.json").read_text())
        for name in RUN_NAMES
    }
    # The terminal shows progress only; each run's full log is its console.log in the store.
    logs = "".join((store / "runs" / f"concurrent-{name}" / "console.log").read_text() for name in RUN_NAMES)
    return store, records, logs


def test_each_stage_computed_once_and_reused_once(concurrent_runs):
    _, records, logs = concurrent_runs
    alpha, beta = (records[name] for name in RUN_NAMES)
    assert alpha["status"] == beta["status"] == "completed"
    assert set(alpha["stages"]) == set(beta["stages"]) and "pretrain" in alpha["stages"]
    for stage in sorted(set(alpha["stages"]) - {"report"}):
        pair = (alpha["stages"][stage], beta["stages"][stage])
        assert sorted(outcome["status"] for outcome in pair) == ["completed", "reused"], stage
        assert pair[0]["artifact_id"] == pair[1]["artifact_id"], stage
    # Started together, the second run meets the first's lock on the clean stage at least.
    assert "waiting for another run computing this stage" in logs


def test_every_artifact_verifies_and_nothing_is_left_behind(concurrent_runs):
    store, records, _ = concurrent_runs
    artifact_ids = {
        outcome["artifact_id"] for record in records.values() for outcome in record["stages"].values()
    }
    for artifact_id in sorted(artifact_ids):
        result = lmforge("verify", artifact_id, "--store", str(store))
        assert result.returncode == 0, result.stderr
    assert not list((store / "tmp").iterdir()) and not list((store / "work").iterdir())
    listed = json.loads(lmforge("runs", "--json", "--store", str(store)).stdout)
    assert {run["run_id"]: run["status"] for run in listed} == {
        f"concurrent-{name}": "completed" for name in RUN_NAMES
    }
