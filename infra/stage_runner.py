"""Run a stage through the artifact store: reuse it when its recipe is stored, else compute and publish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.lineage import code_fingerprint, recipe_key
from infra.store import ArtifactStore, ExternalFile, hash_external, utc_now
from lmforge.logs import get_logger

log = get_logger(__name__)

# Packages every stage depends on; a stage adds its own.
CORE_PACKAGES = ("lmforge", "infra")


@dataclass
class StageOutcome:
    """What a stage produced, as recorded in run.json."""

    stage: str
    status: str  # "completed" or "reused"
    artifact_id: str
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class StageRunner:
    """Executes stages for one pipeline run.

    A stage's recipe is (stage name, resolved stage config, parent artifact ids, fingerprint of its code,
    seed). A stored artifact with the same recipe is reused unless the stage is forced.
    """

    def __init__(self, store: ArtifactStore, run_id: str, forced: set[str] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.forced = forced or set()

    def run(
        self,
        stage: str,
        kind: str,
        *,
        config: Any,
        parents: list[str],
        packages: tuple[str, ...],
        compute: Callable[[Path], dict[str, Any]],
        seed: int | None = None,
        external_files: list[ExternalFile] | None = None,
        forced_name: str | None = None,
    ) -> StageOutcome:
        fingerprint = code_fingerprint(tuple(sorted(set(packages) | set(CORE_PACKAGES))))
        # Raw inputs are part of the recipe by content: an edited input file means a new artifact.
        external = hash_external(external_files or [])
        inputs = [(record["uri"], record["sha256"]) for record in external]
        key = recipe_key(stage, {"config": config, "inputs": inputs}, parents, fingerprint, seed)
        if (forced_name or stage) not in self.forced:
            existing = self.store.find_by_recipe(key)
            if existing is not None and self._intact(existing):
                log.info("%s: reusing %s (inputs, config and code unchanged)", stage, existing["id"])
                return StageOutcome(
                    stage,
                    "reused",
                    existing["id"],
                    str(self.store.data_path(existing["id"])),
                    existing["metrics"],
                )
        log.info("%s: computing", stage)
        started, start_time = utc_now(), time.perf_counter()
        with self.store.staging() as output_dir:
            metrics = compute(output_dir)
            seconds = time.perf_counter() - start_time
            manifest = self.store.publish(
                output_dir,
                kind=kind,
                stage=stage,
                parents=parents,
                config=config,
                recipe_key=key,
                seed=seed,
                metrics=metrics,
                timings={"started_at": started, "finished_at": utc_now(), "seconds": round(seconds, 3)},
                run_id=self.run_id,
                code_fingerprint=fingerprint,
                external_files=external,
            )
        log.info("%s: published %s in %.1f s", stage, manifest["id"], seconds)
        return StageOutcome(
            stage,
            "completed",
            manifest["id"],
            str(self.store.data_path(manifest["id"])),
            metrics,
            round(seconds, 3),
        )

    def _intact(self, manifest: dict[str, Any]) -> bool:
        """Cheap check before reuse: every recorded file is there with its size (`verify` re-hashes)."""
        root = self.store.data_path(manifest["id"])
        for record in manifest["files"]:
            path = root / record["path"]
            if not path.is_file() or path.stat().st_size != record["size"]:
                log.warning("%s: stored artifact is damaged (%s); recomputing", manifest["id"], path)
                return False
        return True
