"""The run record (<store>/runs/<run_id>/run.json), rewritten atomically as stages finish, and the
listing `lmforge runs` prints, which tells a live run from one whose process died."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from lmforge.core.errors import ConfigError
from lmforge.infra.lineage import code_version, source_files
from lmforge.infra.locks import StoreLock, describe_holder, is_held, pid_alive, read_holder
from lmforge.infra.stage_runner import StageOutcome
from lmforge.infra.store import ArtifactStore, utc_now

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
# Stopped on purpose: Ctrl-C, or a cancel from the Prefect UI (the runner's SIGTERM).
CANCELLED = "cancelled"
# A record still saying "running" whose process is gone (killed, crashed host): it never finishes.
INTERRUPTED = "interrupted"


def new_run_id(config_name: str) -> str:
    """`<config name>-<UTC time>-<6 hex>`: sorts by start time, unique across hosts."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{config_name}-{stamp}-{uuid.uuid4().hex[:6]}"


class RunRecord:
    """run.json of one pipeline run; holds the run's lock until it finishes, as its sign of life."""

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        config_name: str,
        config: dict[str, Any],
        prefect_flow_run_id: str | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self._lock = StoreLock(store.lock_path("run", run_id), run_id)
        if not self._lock.try_acquire():
            holder = describe_holder(read_holder(self._lock.path))
            raise ConfigError(f"run id {run_id!r} is in use by a live run ({holder}); lock {self._lock.path}")
        self._start = time.perf_counter()
        self.data: dict[str, Any] = {
            "run_id": run_id,
            "config_name": config_name,
            "status": RUNNING,
            "started_at": utc_now(),
            "finished_at": None,
            "wall_seconds": None,
            "store": store.location,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            # The Prefect flow run executing this run (its page in the UI: /runs/flow-run/<id>).
            "prefect_flow_run_id": prefect_flow_run_id,
            "code": code_version(),
            # sha256 of each package file: what `lmforge release` archives and `reproduce` compares.
            "code_files": source_files(),
            "config": config,
            "stages": {},
            "report": None,
            "error": None,
        }
        self.path = self.save()

    def save(self) -> Path:
        return self.store.write_run_record(self.run_id, self.data)

    def stage_done(self, outcome: StageOutcome) -> None:
        self.data["stages"][outcome.stage] = outcome.to_record()
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data.update(self._closing(status), error=error)
        self.save()
        # A finished record needs no sign of life; unlinked while held (see locks.hold_if_free).
        self._lock.path.unlink(missing_ok=True)
        self._lock.release()

    def as_completed(self) -> dict[str, Any]:
        """The record as it will read once the run completes (what the report describes)."""
        return {**self.data, **self._closing(COMPLETED)}

    def _closing(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "finished_at": utc_now(),
            "wall_seconds": round(time.perf_counter() - self._start, 1),
        }


def list_runs(store: ArtifactStore) -> list[dict[str, Any]]:
    """One summary per run.json in the store (for a URL store, the remote copies), oldest first."""
    summaries = []
    for run_id, raw, modified in store.run_records():
        try:
            record = json.loads(raw) if raw is not None else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            summaries.append({"run_id": run_id, "status": "unreadable", "stages": {}})
            continue
        summaries.append(summarize(store, record, run_id, modified))
    return sorted(summaries, key=lambda summary: summary.get("started_at") or "")


def summarize(store: ArtifactStore, record: dict[str, Any], run_id: str, modified: float) -> dict[str, Any]:
    """Run id, config, status (interrupted when a running record's process is gone), times, stages.

    `modified`: when run.json was last written, the last sign of life of an interrupted run.
    """
    status = record.get("status")
    wall = record.get("wall_seconds")
    if status == RUNNING:
        alive = is_alive(store, record)
        status = RUNNING if alive else INTERRUPTED
        # Still running: time so far; interrupted: until the record's last update, its last sign of life.
        until = time.time() if alive else modified
        wall = _seconds_since(record.get("started_at"), until)
    return {
        "run_id": record.get("run_id", run_id),
        "config_name": record.get("config_name"),
        "status": status,
        "started_at": record.get("started_at"),
        "wall_seconds": wall,
        "host": record.get("host"),
        "pid": record.get("pid"),
        "stages": {
            name: {"status": stage.get("status"), "artifact_id": stage.get("artifact_id")}
            for name, stage in record.get("stages", {}).items()
        },
    }


def is_alive(store: ArtifactStore, record: dict[str, Any]) -> bool:
    """Whether the process of a record saying "running" still runs it.

    The run lock answers for any host that shares the store's filesystem; without a lock file (records
    written before run locks existed) the pid is checked when the run was on this host, and a run on
    another host is taken at its word. Locks are per machine for a URL store (they live in this
    node's cache), so there a run on another host is always taken at its word.
    """
    lock_path = store.lock_path("run", str(record.get("run_id")))
    if lock_path.exists():
        return is_held(lock_path)
    pid = record.get("pid")
    if record.get("host") == socket.gethostname() and isinstance(pid, int):
        return pid_alive(pid)
    return True


def _seconds_since(started_at: str | None, until: float) -> float | None:
    if not started_at:
        return None
    return round(until - dt.datetime.fromisoformat(started_at).timestamp(), 1)
