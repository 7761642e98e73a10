"""The run record (<store>/runs/<run_id>/run.json), rewritten atomically as stages finish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmforge.infra.lineage import code_version
from lmforge.infra.stage_runner import StageOutcome
from lmforge.infra.store import ArtifactStore, utc_now


class RunRecord:
    def __init__(self, store: ArtifactStore, run_id: str, config_name: str, config: dict[str, Any]) -> None:
        self.store = store
        self.run_id = run_id
        self._start = time.perf_counter()
        self.data: dict[str, Any] = {
            "run_id": run_id,
            "config_name": config_name,
            "status": "running",
            "started_at": utc_now(),
            "finished_at": None,
            "wall_seconds": None,
            "store": str(store.root),
            "code": code_version(),
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

    def as_completed(self) -> dict[str, Any]:
        """The record as it will read once the run completes (what the report describes)."""
        return {**self.data, **self._closing("completed")}

    def _closing(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "finished_at": utc_now(),
            "wall_seconds": round(time.perf_counter() - self._start, 1),
        }
