"""Deployments through the real CLI against the session's real Prefect server: a cron schedule, runs
triggered through Prefect's client API as the UI triggers them, executed by `lmforge serve`, a bad
parameter, and a cancel during pre-training followed by a resuming re-run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.app.config import PipelineConfig
from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LMFORGE = str(Path(sys.executable).with_name("lmforge"))
DEPLOYMENT = "tiny-nightly"
FULL_NAME = f"lmforge-pipeline/{DEPLOYMENT}"
CRON = "0 3 * * *"


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data_dir, ray_runtime, prefect_server):
    """`lmforge deploy` of configs/tiny.yaml with a cron schedule, and `lmforge serve` executing its runs
    on the session's Ray runtime."""
    root = tmp_path_factory.mktemp("served")
    store = root / "store"
    env = {
        **os.environ,
        **prefect_server.environment(),
        "LMFORGE_DATA_DIR": str(shared_data_dir),
        # Served runs join the session's Ray runtime instead of starting their own.
        "LMFORGE_RAY_ADDRESS": ray_runtime.get_runtime_context().gcs_address,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    deployed = subprocess.run(
        [LMFORGE, "deploy", "configs/tiny.yaml", "--name", DEPLOYMENT, "--cron", CRON, "--store", str(store)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr
    log_path = root / "serve.log"
    with open(log_path, "wb") as sink:
        runner = subprocess.Popen(
            [LMFORGE, "serve", DEPLOYMENT], cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield {"store": store, "serve_log": log_path}
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def deployment_record():
    with client() as api:
        return api.read_deployment_by_name(FULL_NAME)


def trigger(config: dict, wait: bool = True):
    """Start a run of the deployment with this config, as the UI's Custom run does."""
    from prefect.deployments import run_deployment

    return run_deployment(FULL_NAME, parameters={"config": config}, timeout=900 if wait else 0)


def flow_run(run_id):
    with client() as api:
        return api.read_flow_run(run_id)


def flow_run_logs(run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with client() as api:
        logs = api.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
            limit=200,
            offset=0,
            sort=LogSort.TIMESTAMP_ASC,
        )
    return "\n".join(entry.message for entry in logs)


def artifact_keys(run_id) -> set[str]:
    """Keys of the flow run's artifacts, its tasks' included (the REST call the UI makes)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    # Only the flow-run filter: a task-run filter (even an empty one) drops flow-level artifacts,
    # and this server version rejects nulls for the filters left out.
    body = {"flow_runs": {"id": {"any_": [str(run_id)]}}, "limit": 200, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    return {artifact["key"] for artifact in response.json() if artifact.get("key")}


def run_json(store: Path, run) -> dict:
    """The store's record of the run this flow run executed."""
    for path in (store / "runs").glob("*/run.json"):
        record = json.loads(path.read_text())
        if record.get("prefect_flow_run_id") == str(run.id):
            return record
    raise AssertionError(f"no run.json under {store / 'runs'} names flow run {run.id}")


def tiny_config(**pretrain) -> dict:
    config = copy.deepcopy(deployment_record().parameters["config"])
    config["pretrain"].update(pretrain)
    return config


def test_deployment_keeps_schedule_and_config_defaults(served):
    record = deployment_record()
    assert [item.schedule.cron for item in record.schedules] == [CRON]
    config = record.parameters["config"]
    assert config["name"] == "tiny"
    assert (
        config["pretrain"]["max_steps"]
        == yaml.safe_load((REPO / "configs/tiny.yaml").read_text())["pretrain"]["max_steps"]
    )
    assert record.parameters["store"] == str(served["store"])
    # The UI's run form comes from this schema: typed sections, registry names offered as choices.
    schema = record.parameter_openapi_schema
    pretrain = schema["definitions"]["PretrainConfig"]["properties"]
    assert pretrain["max_steps"]["type"] == "integer"
    assert set(pretrain["objective"]["enum"]) >= {"clm", "mlm"}


def test_cron_schedule_creates_scheduled_runs(served):
    """The server's scheduler turns the cron into scheduled runs (none fire with SQLAlchemy 2.1)."""
    import datetime as dt

    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {
        "deployments": {"id": {"any_": [str(deployment_record().id)]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "limit": 10,
        "offset": 0,
        "sort": "EXPECTED_START_TIME_ASC",
    }

    def scheduled():
        response = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/filter", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    runs = wait_for(scheduled, 150, "the scheduler to create runs of the cron schedule", every=5)
    starts = [dt.datetime.fromisoformat(run["expected_start_time"]) for run in runs]
    assert all((start.hour, start.minute) == (3, 0) for start in starts), starts
    assert starts[0] > dt.datetime.now(dt.UTC)


def test_triggered_run_with_override_completes(served):
    run = trigger(tiny_config(max_steps=12))
    assert run.state.is_completed(), run.state
    record = run_json(served["store"], run)
    assert record["status"] == "completed"
    assert record["config"]["pretrain"]["max_steps"] == 12
    keys = artifact_keys(run.id)
    for stage in (
        "clean",
        "tokenizer",
        "shard",
        "pretrain",
        "finetune-sst2-finetune-256-s0-pretrained",
        "eval-sst2-icl",
    ):
        assert f"tiny-{stage}-metrics" in keys
        assert f"tiny-{stage}-artifact" in keys
    assert {"tiny-report", "tiny-stages", "tiny-pretrain-progress"} <= keys


@pytest.mark.parametrize(
    "change, key",
    [({"max_steps": "many"}, "pretrain.max_steps"), ({"bogus_key": 1}, "pretrain.bogus_key")],
)
def test_rejected_parameter_fails_the_run_with_the_config_message(served, change, key):
    config = tiny_config(**change)
    with pytest.raises(ConfigError) as expected:
        validate_config(PipelineConfig, config, source="x")
    detail = str(expected.value).splitlines()[1].strip()  # what `lmforge run` prints under its header
    assert key in detail
    run = trigger(config)
    assert run.state.is_failed(), run.state
    # The run's logs reach the server in batches, possibly after its final state.
    wait_for(lambda: detail in flow_run_logs(run.id), 60, f"the flow run's log to show {detail!r}")


def test_cancel_during_pretraining_then_resume(served, ray_runtime):
    store = served["store"]
    config = tiny_config(max_steps=300, checkpoint_every=10, eval_every=100)
    run = trigger(config, wait=False)
    # Ray Train lists a checkpoint in its snapshot once it is complete: a re-run resumes from that.
    checkpoint = wait_for(
        lambda: next(iter(store.glob("work/*/pretrain/checkpoint_manager_snapshot.json")), None),
        600,
        "a registered pre-training checkpoint",
    )
    assert flow_run(run.id).state.is_running()
    from prefect.states import Cancelling

    requested_at = time.monotonic()
    with client() as api:
        api.set_flow_run_state(run.id, Cancelling())
    wait_for(lambda: flow_run(run.id).state.is_cancelled(), 60, "Cancelled")
    record = run_json(store, run)
    assert record["status"] == "cancelled", record
    assert "pretrain" not in record["stages"]
    # Its Ray work stops: every CPU of the shared runtime is free again within seconds.
    total = ray_runtime.cluster_resources()["CPU"]
    wait_for(
        lambda: ray_runtime.available_resources().get("CPU", 0) == total, 30, "the run's Ray workers to end"
    )
    # Within seconds of the request (the runner polls for cancellations every 2 s here).
    assert time.monotonic() - requested_at < 45
    # Nothing half-written is visible: every artifact directory is complete (has its manifest).
    for directory in (store / "artifacts").iterdir():
        assert (directory / "manifest.json").is_file(), directory
    assert checkpoint.exists() or list(store.glob("work/**/checkpoint_*"))

    again = trigger(config)
    assert again.state.is_completed(), again.state
    second = run_json(store, again)
    assert second["stages"]["pretrain"]["status"] == "completed"
    for stage in ("clean", "tokenizer", "shard"):
        assert second["stages"][stage]["status"] == "reused"
    logs = flow_run_logs(again.id)
    assert "resumed pre-training from step" in logs, logs[-2000:]
    resumed_from = int(logs.split("resumed pre-training from step ")[1].split()[0])
    assert 10 <= resumed_from < 300 and resumed_from % 10 == 0


def test_lmforge_ui_serves_on_loopback_with_its_database_in_home(tmp_path):
    import signal
    import urllib.request

    from lmforge.infra.prefect_server import free_port

    port = free_port()
    home = tmp_path / "prefect-home"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    ui = subprocess.Popen(
        [LMFORGE, "ui", "--home", str(home), "--port", str(port)],
        env=env,
        # As from a terminal: Ctrl-C not ignored (a child inherits an ignored SIGINT from this
        # process, which the Ray runtime of the test session may leave so).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return ui.poll() is not None  # exited: stop waiting, the asserts below say why

    try:
        wait_for(healthy, 120, "lmforge ui's server to answer")
        first = ui.stdout.readline()  # printed once the server answers
        assert f"Prefect UI: http://127.0.0.1:{port}" in first, first
        assert (home / "prefect.db").is_file()
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 0
    finally:
        if ui.poll() is None:
            ui.kill()
