"""A fully reused `lmforge run` starts no Ray: the real CLI, twice, on the tiny preset (short pre-training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_PRETRAIN = ("pretrain.max_steps=4", "pretrain.warmup_steps=1", "pretrain.eval_every=2")
RAY_START = "starting a local Ray runtime"


def lmforge_run(store: Path, run_id: str, env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "lmforge.app.cli", "run", "configs/tiny.yaml"]
    command += ["--store", str(store), "--run-id", run_id]
    for override in SHORT_PRETRAIN:
        command += ["--set", override]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads((store / "runs" / run_id / "run.json").read_text())
    record["console"] = (store / "runs" / run_id / "console.log").read_text()
    return record


def test_a_fully_reused_run_starts_no_ray_and_reuses_the_same_artifacts(tmp_path, shared_data_dir):
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env.update(
        LMFORGE_DATA_DIR=str(shared_data_dir),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        LMFORGE_CACHE_DIR=str(tmp_path / "cache"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    store = tmp_path / "store"
    first = lmforge_run(store, "first", env)
    assert RAY_START in first["console"]
    second = lmforge_run(store, "second", env)
    assert RAY_START not in second["console"]
    assert second["status"] == "completed"
    for name, stage in second["stages"].items():
        if name != "report":
            assert stage["status"] == "reused", name
            # The precision probed in-process resolves as the Ray task did: the same recipe, reused.
            assert stage["artifact_id"] == first["stages"][name]["artifact_id"], name
    assert second["stages"]["report"]["status"] == "completed"
