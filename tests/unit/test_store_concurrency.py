"""Runs sharing one store: recipe locks, crash release and resume, gc, and the run listing."""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from lmforge.app.cli import main
from lmforge.core.errors import ConfigError
from lmforge.flows.run_record import RunRecord, list_runs
from lmforge.infra.locks import StoreLock, holder_note, is_held
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore
from lmforge.infra.store_gc import collect_garbage, parse_duration

pytestmark = pytest.mark.unit
SPAWN = multiprocessing.get_context("spawn")
CODE = ("lmforge.infra.store",)
DAY = 86400.0


WAITING = "waiting for another run computing this stage"


def slow_compute(out: Path, work: str) -> dict:
    """A fake stage: notes that it ran, resumes from a checkpoint in its work dir if one is there.

    Where the test expects a second run (an `expect-waiter` file), it holds the stage until that
    run's log says it is waiting (or 60 s pass), so the test does not depend on the other process
    reaching the lock within a fixed sleep."""
    test_dir = out.parents[3]
    with open(test_dir / "computes.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    resumed = (Path(work) / "checkpoint").exists()
    deadline = time.monotonic() + 60
    while (test_dir / "expect-waiter").exists() and time.monotonic() < deadline:
        if any(WAITING in path.read_text() for path in test_dir.glob("run-*.log")):
            break
        time.sleep(0.05)
    (out / "result.txt").write_text("42")
    return {"resumed": resumed}


def crashing_compute(out: Path, work: str) -> dict:
    """Writes a checkpoint and hangs, so that the test can kill it mid-stage like a crashed run."""
    (Path(work) / "checkpoint").write_text("step 10")
    (out / "partial.bin").write_bytes(b"half")
    (out.parents[3] / "crasher-ready").touch()
    time.sleep(600)
    return {}


def run_stage(root: str, run_id: str, barrier, compute_name: str = "slow_compute") -> None:
    """Child process: run the fake stage through a StageRunner and write its outcome as JSON."""
    logging.basicConfig(filename=f"{root}/../{run_id}.log", level=logging.INFO)
    runner = StageRunner(ArtifactStore(root), run_id)
    compute = globals()[compute_name]
    if barrier is not None:
        barrier.wait()  # both processes reach the lock at the same moment
    outcome = runner.run("stage", "thing", config={"a": 1}, parents=[], code=CODE, compute=compute)
    Path(f"{root}/../{run_id}.json").write_text(json.dumps(outcome.to_record()))


def start(target, *args):
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


def test_two_processes_same_recipe_one_computes_other_reuses(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    barrier = SPAWN.Barrier(2)
    (tmp_path / "expect-waiter").touch()
    processes = [start(run_stage, str(store.root), f"run-{n}", barrier) for n in (1, 2)]
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    outcomes = [json.loads((tmp_path / f"run-{n}.json").read_text()) for n in (1, 2)]
    assert sorted(outcome["status"] for outcome in outcomes) == ["completed", "reused"]
    assert outcomes[0]["artifact_id"] == outcomes[1]["artifact_id"]
    assert len((tmp_path / "computes.log").read_text().split()) == 1, "exactly one process computes"
    assert store.verify(outcomes[0]["artifact_id"]) == []
    assert not list((store.root / "tmp").iterdir()) and not list((store.root / "work").iterdir())
    computer, waiter = ("run-1", "run-2") if outcomes[0]["status"] == "completed" else ("run-2", "run-1")
    log = (tmp_path / f"{waiter}.log").read_text()
    assert log.count(WAITING) == 1
    assert f"run {computer}, pid" in log, "the wait names the holder's run id and pid"
    assert f"reusing {outcomes[0]['artifact_id']}" in log


def test_a_waiter_arriving_before_the_holder_wrote_its_note_still_names_the_holder(tmp_path):
    # The holder takes the flock first and writes its note just after; a waiter in between used to
    # read the empty file and log "holder unknown".
    path = tmp_path / "locks" / "recipe-x.lock"
    path.parent.mkdir()
    told: list = []
    with open(path, "a+") as holder_file:
        fcntl.flock(holder_file.fileno(), fcntl.LOCK_EX)

        def write_note_then_release() -> None:
            time.sleep(0.3)
            holder_file.write(json.dumps(holder_note("holder-run")))
            holder_file.flush()
            deadline = time.monotonic() + 30  # a waiter that never waits fails the test, not hangs it
            while not told and time.monotonic() < deadline:
                time.sleep(0.01)
            fcntl.flock(holder_file.fileno(), fcntl.LOCK_UN)

        holder = threading.Thread(target=write_note_then_release)
        holder.start()
        StoreLock(path, "waiter-run").acquire(on_wait=told.append)
        holder.join()
    assert told[0] is not None and told[0]["run_id"] == "holder-run"


def test_crashed_holder_releases_lock_and_the_next_attempt_resumes(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    crasher = start(run_stage, str(store.root), "crasher", None, "crashing_compute")
    deadline = time.monotonic() + 60
    while not (tmp_path / "crasher-ready").exists():
        assert time.monotonic() < deadline and crasher.is_alive()
        time.sleep(0.1)
    lock = next((store.root / "locks").glob("recipe-*.lock"))
    assert is_held(lock)
    # Garbage collection leaves the live attempt's staging and work directories alone.
    assert collect_garbage(store, older_than=0).removed == []
    os.kill(crasher.pid, signal.SIGKILL)
    crasher.join(30)
    assert not is_held(lock), "the kernel drops a dead holder's lock"
    run_stage(str(store.root), "rerun", None)
    outcome = json.loads((tmp_path / "rerun.json").read_text())
    assert outcome["status"] == "completed" and outcome["metrics"] == {"resumed": True}
    assert store.verify(outcome["artifact_id"]) == []
    # The killed attempt's staging directory is an orphan now: gc collects it, and nothing else.
    orphans = list((store.root / "tmp").iterdir())
    assert len(orphans) == 1 and (orphans[0] / "data" / "partial.bin").exists()
    report = collect_garbage(store, older_than=0)
    assert [path for path, _ in report.removed] == orphans and report.num_bytes >= 4
    assert not list((store.root / "tmp").iterdir())


def age(path: Path, seconds: float) -> None:
    """Make every entry below `path` look `seconds` old."""
    then = time.time() - seconds
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (then, then))


def test_gc_removes_old_orphans_but_not_held_or_young_ones(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    orphan = store.root / "tmp" / "deadbeef"
    (orphan / "data").mkdir(parents=True)
    (orphan / "data" / "f.bin").write_bytes(b"x" * 1000)
    age(orphan, 2 * DAY)
    young = store.root / "tmp" / "cafe"
    young.mkdir()
    busy_key = "ab" * 32
    busy = store.work_dir(busy_key)
    (busy / "ckpt").write_bytes(b"y" * 10)
    age(busy, 2 * DAY)
    idle = store.work_dir("cd" * 32)
    (idle / "ckpt").write_bytes(b"z" * 10)
    age(idle, 2 * DAY)
    with store.recipe_lock(busy_key, "busy-run").held():
        dry = collect_garbage(store, DAY, dry_run=True)
        assert sorted(path for path, _ in dry.removed) == sorted([orphan, idle])
        assert orphan.exists() and idle.exists(), "a dry run removes nothing"
        report = collect_garbage(store, DAY)
    assert sorted(path for path, _ in report.removed) == sorted([orphan, idle])
    assert report.num_bytes == 1010
    assert [path for path, _ in report.in_use] == [busy]
    assert report.in_use[0][1]["run_id"] == "busy-run"
    assert busy.exists() and young.exists() and not orphan.exists() and not idle.exists()


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_bad_text():
    with pytest.raises(ConfigError, match="2 hours"):
        parse_duration("2 hours")


def start_run_and_die(root: str) -> None:
    """Child process: start a run record, then die without finishing it (like a killed `lmforge run`)."""
    RunRecord(ArtifactStore(root), "crashed-run", "tiny", {})
    os._exit(1)


def write_legacy_record(store: ArtifactStore, run_id: str, host: str, pid: int) -> None:
    """A record as written before run locks existed: status running, no lock file."""
    record = {"run_id": run_id, "config_name": "tiny", "status": "running", "host": host, "pid": pid}
    store.write_run_record(run_id, {**record, "started_at": "2024-01-01T00:00:00+00:00", "stages": {}})


def test_runs_tells_live_finished_and_interrupted_runs_apart(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    done = RunRecord(store, "done-run", "tiny", {})
    done.data["stages"]["clean"] = {"status": "completed", "artifact_id": "corpus-123"}
    done.finish("completed")
    live = RunRecord(store, "live-run", "tiny", {})
    with pytest.raises(ConfigError, match="live-run"):
        RunRecord(store, "live-run", "tiny", {})
    child = start(start_run_and_die, str(store.root))
    child.join(60)
    dead_pid = child.pid
    write_legacy_record(store, "legacy-dead", socket.gethostname(), dead_pid)
    write_legacy_record(store, "legacy-elsewhere", "some-other-host", 1)
    statuses = {run["run_id"]: run["status"] for run in list_runs(store)}
    assert statuses == {
        "done-run": "completed",
        "live-run": "running",
        "crashed-run": "interrupted",
        "legacy-dead": "interrupted",
        "legacy-elsewhere": "running",
    }
    assert main(["runs", "--store", str(store.root), "--json"]) == 0
    listed = {run["run_id"]: run for run in json.loads(capsys.readouterr().out)}
    assert listed["done-run"]["stages"] == {"clean": {"status": "completed", "artifact_id": "corpus-123"}}
    assert listed["crashed-run"]["pid"] == dead_pid and listed["crashed-run"]["wall_seconds"] is not None
    assert main(["runs", "--store", str(store.root)]) == 0
    text = capsys.readouterr().out
    assert "corpus-123" in text and "interrupted" in text
    live.finish("completed")
    assert {run["run_id"]: run["status"] for run in list_runs(store)}["live-run"] == "completed"
