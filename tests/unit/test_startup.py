"""What a fully reused run skips: Ray's start, the device probe as a Ray task, re-reading raw inputs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from lmforge.infra import file_hashes, ray_runtime
from lmforge.infra.progress import ProgressRelay
from lmforge.infra.remote_fs import CACHE_ENV
from lmforge.infra.stage_runner import WOULD_COMPUTE, WOULD_REUSE, ReuseProbe, StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile, hash_external
from lmforge.training import PretrainConfig, launcher
from lmforge.training.precision import probe_device, resolve_precision

pytestmark = pytest.mark.unit


def settled_file(path: Path, text: str) -> Path:
    """A file written long enough ago that its hash is recorded."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def test_input_hash_is_remembered_and_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    records = tmp_path / "records"
    path = settled_file(tmp_path / "corpus.txt", "first version")
    assert file_hashes.cached_sha256(path, records) == hashlib.sha256(b"first version").hexdigest()
    assert len(list(records.iterdir())) == 1

    def no_reading(_path):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(file_hashes, "sha256_file", no_reading)
    assert file_hashes.cached_sha256(path, records) == hashlib.sha256(b"first version").hexdigest()
    monkeypatch.undo()

    # Same size, mtime set back: the ctime still moves, so the new content is read.
    mtime = path.stat().st_mtime_ns
    path.write_text("other version")
    os.utime(path, ns=(mtime, mtime))
    assert file_hashes.cached_sha256(path, records) == hashlib.sha256(b"other version").hexdigest()


def test_a_file_changed_just_now_is_not_recorded(tmp_path):
    records = tmp_path / "records"
    path = tmp_path / "fresh.txt"
    path.write_text("still being written")
    assert file_hashes.cached_sha256(path, records) == hashlib.sha256(b"still being written").hexdigest()
    assert not records.exists()


def test_hash_external_uses_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = settled_file(tmp_path / "input.txt", "data")
    [record] = hash_external([ExternalFile("input.txt", path), *[]])
    assert record["sha256"] == hashlib.sha256(b"data").hexdigest() and record["size"] == 4
    assert len(list((tmp_path / "cache" / file_hashes.RECORDS_DIR).iterdir())) == 1


def run_stage(runner: StageRunner, config: dict, calls: list[str]):
    def compute(out: Path, _work: str) -> dict:
        calls.append(runner.run_id)
        (out / "result.txt").write_text(str(config))
        return {}

    return runner.run(
        "stage", "thing", config=config, parents=[], code=("lmforge.infra.store",), compute=compute
    )


def test_reuse_probe_answers_without_computing(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    calls: list[str] = []
    run_stage(StageRunner(store, "build"), {"a": 1}, calls)
    probe = ReuseProbe(StageRunner(store, "probe"))
    assert run_stage(probe, {"a": 1}, calls).status == WOULD_REUSE
    assert run_stage(probe, {"a": 2}, calls).status == WOULD_COMPUTE
    forced = ReuseProbe(StageRunner(store, "forced", forced={"stage"}))
    assert run_stage(forced, {"a": 1}, calls).status == WOULD_COMPUTE
    assert calls == ["build"]
    assert not any((store.root / "locks").glob("*probe*"))


def test_ensure_ray_starts_where_the_run_planned(monkeypatch):
    started: list[tuple] = []
    monkeypatch.setattr(ray_runtime, "ray_initialized", lambda: bool(started))
    monkeypatch.setattr(ray_runtime, "_init", lambda address, num_cpus: started.append((address, num_cpus)))
    monkeypatch.setattr(ray_runtime, "_plan", ray_runtime._Plan())
    monkeypatch.delenv(ray_runtime.RAY_ADDRESS_ENV, raising=False)
    monkeypatch.delenv(ray_runtime.RAY_JOB_ENV, raising=False)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: bool(started))
    ray_runtime.plan_ray(None, 3)
    assert ray_runtime.local_runtime_pending() and not started
    ray_runtime.ensure_ray()
    assert started == [(None, 3)]
    ray_runtime.ensure_ray()
    assert started == [(None, 3)], "idempotent"


def test_a_planned_cluster_is_not_a_local_runtime(monkeypatch):
    monkeypatch.setattr(ray_runtime, "_plan", ray_runtime._Plan())
    monkeypatch.setattr(ray_runtime, "ray_initialized", lambda: False)
    monkeypatch.delenv(ray_runtime.RAY_JOB_ENV, raising=False)
    ray_runtime.plan_ray("ray://head:10001", None)
    assert not ray_runtime.local_runtime_pending()


def no_ray(*_args, **_kwargs):
    raise AssertionError("Ray was started")


def test_precision_of_a_local_runtime_is_probed_here(monkeypatch):
    monkeypatch.setattr(ray_runtime, "local_runtime_pending", lambda: True)
    monkeypatch.setattr(ray_runtime, "ensure_ray", no_ray)
    monkeypatch.setattr(ray_runtime, "run_remote", no_ray)
    config = PretrainConfig(precision="auto", use_gpu=False)
    resolved = launcher.worker_precision(config)
    assert resolved.precision == resolve_precision("auto", probe_device("cpu")).precision
    assert launcher.worker_precision(PretrainConfig(precision="fp32", use_gpu=False)).precision == "fp32"


def test_precision_for_a_cluster_is_probed_on_it(monkeypatch):
    monkeypatch.setattr(ray_runtime, "local_runtime_pending", lambda: False)
    monkeypatch.setattr(ray_runtime, "ensure_ray", lambda: None)
    monkeypatch.setattr(ray_runtime, "cuda_available_on_cluster", lambda: False)
    remote_calls: list[str] = []

    def run_remote(fn, device_type, measure, **_resources):
        remote_calls.append(device_type)
        return fn(device_type, measure)

    monkeypatch.setattr(ray_runtime, "run_remote", run_remote)
    launcher.worker_precision(PretrainConfig(precision="auto"))
    assert remote_calls == ["cpu"]


def test_entering_the_progress_relay_starts_nothing(monkeypatch):
    monkeypatch.setattr(ray_runtime, "ensure_ray", no_ray)
    with ProgressRelay("run-1") as relay:
        assert not relay.started
    assert not relay.started


def test_a_new_server_home_starts_from_the_migrated_template(tmp_path, monkeypatch):
    from lmforge.infra import prefect_server

    for name in prefect_server.DATABASE_URL_ENV:
        monkeypatch.delenv(name, raising=False)
    template = tmp_path / "template.db"
    template.write_bytes(b"migrated")
    home = tmp_path / "home"
    home.mkdir()
    assert prefect_server.seed_database(home, template) == "copied"
    assert (home / prefect_server.DATABASE_FILE).read_bytes() == b"migrated"
    (home / prefect_server.DATABASE_FILE).write_bytes(b"a run's rows")
    assert prefect_server.seed_database(home, template) == "kept"
    assert (home / prefect_server.DATABASE_FILE).read_bytes() == b"a run's rows"
    monkeypatch.setenv(prefect_server.DATABASE_URL_ENV[0], "postgresql+asyncpg://db/prefect")
    assert prefect_server.seed_database(tmp_path / "other", template) == "skipped"


def test_a_missing_template_is_built_in_the_background(tmp_path, monkeypatch):
    from lmforge.infra import prefect_server

    for name in prefect_server.DATABASE_URL_ENV:
        monkeypatch.delenv(name, raising=False)
    launched: list[list[str]] = []
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda command, **_: launched.append(command))
    home = tmp_path / "home"
    home.mkdir()
    template = tmp_path / "cache" / "prefect-x.db"
    assert prefect_server.seed_database(home, template) == "building"
    assert not (home / prefect_server.DATABASE_FILE).exists()
    [command] = launched
    assert command[:2] == ["sh", "-c"] and command[-2] == str(template)
    assert "create_db" in command[-1] and "run_block_auto_registration" in command[-1]


def test_a_server_on_a_template_copy_skips_migrations_and_block_registration(tmp_path, monkeypatch):
    from lmforge.infra import prefect_server

    for name in prefect_server.DATABASE_URL_ENV:
        monkeypatch.delenv(name, raising=False)
    template = tmp_path / "template.db"
    template.write_bytes(b"migrated")
    monkeypatch.setattr(prefect_server, "database_template", lambda: template)
    launched: list[dict[str, str]] = []
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda command, env, **_: launched.append(env))
    monkeypatch.setattr(prefect_server.PrefectServer, "healthy", lambda self: False)
    prefect_server.PrefectServer(tmp_path / "new", port=1).launch()
    home = tmp_path / "used"
    home.mkdir()
    (home / prefect_server.DATABASE_FILE).write_bytes(b"a run's rows")
    prefect_server.PrefectServer(home, port=1).launch()
    fresh, kept = launched
    assert prefect_server.TEMPLATE_READY_ENV.items() <= fresh.items()
    assert not any(name in kept for name in prefect_server.TEMPLATE_READY_ENV)


def test_the_template_is_named_by_prefect_version_and_collections() -> None:
    import importlib.metadata

    from lmforge.infra.prefect_server import database_template

    name = database_template().name
    assert name.startswith(f"prefect-{importlib.metadata.version('prefect')}-blocks-") and name.endswith(
        ".db"
    )


def test_the_run_server_is_launched_early_and_dropped_for_a_profiles_server(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lmforge.app.cli import run_prefect_server
    from lmforge.infra.prefect_server import PrefectServer

    events: list[str] = []
    monkeypatch.setattr(PrefectServer, "launch", lambda self: events.append("launch") or self)
    monkeypatch.setattr(PrefectServer, "stop", lambda self, grace=15.0: events.append("stop"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with run_prefect_server(tmp_path / "a") as server:
        assert server is None and events == []
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(updates={PREFECT_API_URL: None}), run_prefect_server(tmp_path / "b") as server:
        assert server is not None and events == ["launch"]
    assert events == ["launch", "stop"]
    (tmp_path / "c").mkdir()
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}),
        run_prefect_server(tmp_path / "c") as server,
    ):
        assert server is None
    assert events == ["launch", "stop", "launch", "stop"] and not (tmp_path / "c").exists()


def test_a_stopped_run_servers_home_moves_into_the_run_folder(tmp_path):
    from lmforge.app.cli import keep_server_home

    scratch = tmp_path / "tmp" / "1-abc"
    scratch.mkdir(parents=True)
    (scratch / "prefect.db").write_bytes(b"this run's rows")
    home = tmp_path / "store" / "runs" / "r1" / "prefect"
    keep_server_home(scratch, home)
    assert (home / "prefect.db").read_bytes() == b"this run's rows" and not scratch.exists()
    # The same --run-id again: the earlier home is kept beside the new one, not overwritten.
    scratch.mkdir()
    (scratch / "prefect.db").write_bytes(b"the second run's rows")
    keep_server_home(scratch, home)
    assert (home / "prefect.db").read_bytes() == b"the second run's rows"
    assert (home.with_name("prefect-1-abc") / "prefect.db").read_bytes() == b"this run's rows"
    # No run folder (the config was rejected): the scratch home goes.
    scratch.mkdir()
    keep_server_home(scratch, None)
    assert not scratch.exists()


def test_the_run_server_is_launched_before_the_config_loads_and_removed_on_a_config_error(
    tmp_path, monkeypatch, capsys
):
    from lmforge.app import cli
    from lmforge.infra.prefect_server import PrefectServer

    events: list[str] = []

    def launch(self):
        events.append("launch")
        self.home.mkdir(parents=True)
        return self

    monkeypatch.setattr(PrefectServer, "launch", launch)
    monkeypatch.setattr(PrefectServer, "stop", lambda self, grace=15.0: events.append("stop"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(cli, "server_scratch_home", lambda: tmp_path / "scratch")
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nno_such_key: 1\n")
    assert cli.main(["run", str(config), "--store", str(tmp_path / "store")]) != 0
    assert "no_such_key" in capsys.readouterr().err
    assert events == ["launch", "stop"]
    assert not (tmp_path / "scratch").exists()
    assert not (tmp_path / "store" / "runs").exists()


def test_homes_left_by_killed_runs_are_swept_into_their_run_folders(tmp_path):
    import subprocess
    import sys

    from lmforge.app.cli import SERVER_HOME_DESTINATION, SERVER_HOME_PREFIX, sweep_server_homes

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead, alive = ended.pid, os.getpid()
    killed = tmp_path / f"{SERVER_HOME_PREFIX}{dead}-a"  # killed mid-run: its run folder is known
    killed.mkdir()
    (killed / "prefect.db").write_bytes(b"rows")
    home = tmp_path / "store" / "runs" / "r1" / "prefect"
    (killed / SERVER_HOME_DESTINATION).write_text(str(home))
    early = tmp_path / f"{SERVER_HOME_PREFIX}{dead}-b"  # killed before its config loaded
    early.mkdir()
    running = tmp_path / f"{SERVER_HOME_PREFIX}{alive}-c"  # a run still going
    running.mkdir()
    assert sorted(sweep_server_homes(tmp_path)) == [killed, early]
    assert (home / "prefect.db").read_bytes() == b"rows" and not (home / SERVER_HOME_DESTINATION).exists()
    assert not killed.exists() and not early.exists() and running.exists()
