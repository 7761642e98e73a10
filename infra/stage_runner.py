"""Run a stage through the artifact store: reuse it when its recipe is stored, else compute and publish."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.core.logs import get_logger
from lmforge.infra.lineage import code_fingerprint, recipe_key
from lmforge.infra.store import ArtifactStore, ExternalFile, hash_external, utc_now

log = get_logger(__name__)

# The shared modules every stage runs; a stage adds its own packages. The CLI, report, store and
# flow code are left out: editing them does not change what a stage computes.
CORE_SOURCES = (
    "lmforge/core",
    "infra/data_paths.py",
    "infra/ray_runtime.py",
)

# compute(output_dir, work_dir): write the artifact's files into output_dir; work_dir is scratch
# space that survives a crash (keyed by the recipe, so a re-run can resume) and is removed on success.
Compute = Callable[[Path, Path], dict[str, Any]]


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

    A stage's recipe is (stage name, resolved stage config, raw inputs' hashes, the parents' content
    ids, a fingerprint of its code and of the library versions, seed). A stored artifact with the
    same recipe is reused unless the stage is forced.
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
        compute: Compute,
        seed: int | None = None,
        external_files: list[ExternalFile] | None = None,
        forced_name: str | None = None,
        reuse: bool = True,
    ) -> StageOutcome:
        fingerprint = code_fingerprint(tuple(sorted(set(packages) | set(CORE_SOURCES))))
        # Raw inputs count by content, parents by content too: an identical parent (say, a tokenizer
        # retrained byte-for-byte) does not invalidate what was built on it.
        external = hash_external(external_files or [])
        inputs = [(record["uri"], record["sha256"]) for record in external]
        parent_contents = [self.store.get(parent)["content_id"] for parent in parents]
        key = recipe_key(stage, {"config": config, "inputs": inputs}, parent_contents, fingerprint, seed)
        if reuse and (forced_name or stage) not in self.forced:
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
        return self._compute(stage, kind, key, fingerprint, config, parents, seed, external, compute)

    def _compute(
        self,
        stage: str,
        kind: str,
        key: str,
        fingerprint: str,
        config: Any,
        parents: list[str],
        seed: int | None,
        external: list[dict[str, Any]],
        compute: Compute,
    ) -> StageOutcome:
        started, start_time = utc_now(), time.perf_counter()
        work_dir = self.store.work_dir(key)
        with self.store.staging() as output_dir:
            metrics = compute(output_dir, work_dir)
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
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("%s: published %s in %.1f s", stage, manifest["id"], seconds)
        path = str(self.store.data_path(manifest["id"]))
        return StageOutcome(stage, "completed", manifest["id"], path, metrics, round(seconds, 3))

    def _intact(self, manifest: dict[str, Any]) -> bool:
        """Cheap check before reuse: every recorded file is there with its size (`verify` re-hashes)."""
        root = self.store.data_path(manifest["id"])
        for record in manifest["files"]:
            path = root / record["path"]
            if not path.is_file() or path.stat().st_size != record["size"]:
                log.warning("%s: stored artifact is damaged (%s); recomputing", manifest["id"], path)
                return False
        return True
