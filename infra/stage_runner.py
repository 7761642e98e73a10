"""Run a stage through the artifact store: reuse it when its recipe is stored, else compute and publish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.core.configbase import full_view, identity_view
from lmforge.core.logs import get_logger
from lmforge.infra.code_identity import code_identity
from lmforge.infra.lineage import recipe_key, sha256_json
from lmforge.infra.locks import Holder, describe_holder
from lmforge.infra.openlineage import RunLineage
from lmforge.infra.store import ArtifactStore, ExternalFile, hash_external, utc_now

log = get_logger(__name__)

# compute(output_dir, work_area): write the artifact's files into output_dir (local staging); work_area
# is scratch space that survives a crash (keyed by the recipe, so a re-run can resume) and is removed
# on success: a local path, or a URL in the store's work/ for an object store, where every Ray node
# sees it. Both belong to one attempt: output_dir is fresh, the work area is used only under the
# recipe's lock.
Compute = Callable[[Path, str], dict[str, Any]]


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


@dataclass(frozen=True)
class Recipe:
    """A stage's recipe key, its code fingerprint and its raw inputs' records (uri, path, sha256, size)."""

    key: str
    fingerprint: str
    external: list[dict[str, Any]]


class StageRunner:
    """Executes stages for one pipeline run.

    A stage's recipe is (stage name, resolved stage config, raw inputs' hashes, the parents' content
    ids, a fingerprint of its code and of the library versions, seed). A stored artifact with the
    same recipe is reused unless the stage is forced. Runs sharing a store take the recipe's lock
    (store.recipe_lock) for lookup, compute and publish, so one computes and the others reuse.

    Each stage emits OpenLineage events (infra/openlineage.py) when the client is configured:
    START when it starts computing, COMPLETE after publishing, FAIL or ABORT when it raises; a
    reused stage emits START and COMPLETE marked reused, so a run's events chain every stage.
    """

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        forced: set[str] | None = None,
        lineage: RunLineage | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.forced = forced or set()
        self.lineage = lineage or RunLineage.from_environment(store.location, run_id)

    def run(
        self,
        stage: str,
        kind: str,
        *,
        config: Any,
        parents: list[str],
        code: tuple[str, ...],
        compute: Compute,
        seed: int | None = None,
        external_files: list[ExternalFile] | None = None,
        forced_name: str | None = None,
        reuse: bool = True,
        recipe_parents: list[str] | None = None,
    ) -> StageOutcome:
        """Reuse or compute one stage.

        `code`: entry modules (`lmforge.tokenization.shard`) and composition functions
        (`lmforge.flows.steps:shard_step`) whose code shapes the output; see infra.code_identity.
        `recipe_parents`: the parents whose content shapes the output, when that is not all of
        `parents` (a random-init fine-tune reads the pre-trained model's architecture, not its weights).
        """
        recipe = self.recipe(stage, config, parents, code, seed, external_files, recipe_parents)
        config = full_view(config)
        # One attempt per recipe at a time, across processes: a second run waits here, then reuses.
        with self.store.recipe_lock(recipe.key, self.run_id).held(on_wait=self._log_wait(stage)):
            if reuse and (forced_name or stage) not in self.forced:
                reused = self._reuse(stage, recipe.key, parents, recipe.external)
                if reused is not None:
                    return reused
            log.info("%s: computing", stage)
            self.lineage.stage_started(stage, parents, recipe.external, recipe.key)
            try:
                return self._compute(
                    stage,
                    kind,
                    recipe.key,
                    recipe.fingerprint,
                    config,
                    parents,
                    seed,
                    recipe.external,
                    compute,
                )
            except BaseException as err:
                self.lineage.stage_failed(stage, parents, recipe.external, recipe.key, err)
                raise

    def recipe(
        self,
        stage: str,
        config: Any,
        parents: list[str],
        code: tuple[str, ...],
        seed: int | None = None,
        external_files: list[ExternalFile] | None = None,
        recipe_parents: list[str] | None = None,
    ) -> Recipe:
        """The stage's recipe key, from what shapes its output (see the class docstring)."""
        fingerprint = sha256_json(code_identity(code))
        # Raw inputs count by content, parents by content too: an identical parent (say, a tokenizer
        # retrained byte-for-byte) does not invalidate what was built on it.
        external = hash_external(external_files or [])
        inputs = [(record["uri"], record["sha256"]) for record in external]
        shaping = parents if recipe_parents is None else recipe_parents
        parent_contents = [self.store.get(parent)["content_id"] for parent in shaping]
        identity = {"config": identity_view(config), "inputs": inputs}
        key = recipe_key(stage, identity, parent_contents, fingerprint, seed)
        return Recipe(key, fingerprint, external)

    def would_reuse(
        self,
        stage: str,
        kind: str,
        *,
        config: Any,
        parents: list[str],
        code: tuple[str, ...],
        compute: Compute,
        seed: int | None = None,
        external_files: list[ExternalFile] | None = None,
        forced_name: str | None = None,
        reuse: bool = True,
        recipe_parents: list[str] | None = None,
    ) -> bool:
        """Whether `run` with these arguments would find the stage stored (it computes nothing and
        takes no lock; the stored files are checked only when `run` reuses them)."""
        del kind, compute  # the same signature as `run`, so a step can be asked either way
        if not reuse or (forced_name or stage) in self.forced:
            return False
        key = self.recipe(stage, config, parents, code, seed, external_files, recipe_parents).key
        return self.store.find_by_recipe(key) is not None

    @staticmethod
    def _log_wait(stage: str) -> Callable[[Holder | None], None]:
        def log_wait(holder: Holder | None) -> None:
            log.info("%s: waiting for another run computing this stage (%s)", stage, describe_holder(holder))

        return log_wait

    def _reuse(
        self, stage: str, key: str, parents: list[str], external: list[dict[str, Any]]
    ) -> StageOutcome | None:
        """The recipe's stored artifact if it passes the pre-reuse check; a damaged one is moved aside."""
        existing = self.store.find_by_recipe(key)
        if existing is None:
            return None
        problems = self.store.check_reusable(existing)
        if problems:
            log.warning("%s: stored %s is damaged (%s); recomputing", stage, existing["id"], problems[0])
            self.store.quarantine(existing["id"], problems)
            return None
        log.info("%s: reusing %s (inputs, config and code unchanged)", stage, existing["id"])
        path = self.store.data_location(existing["id"])
        # An object store's files are not read for lineage: that would download them.
        local = None if self.store.is_remote else self.store.data_path(existing["id"])
        self.lineage.stage_finished(stage, existing, parents, external, "reused", local)
        return StageOutcome(stage, "reused", existing["id"], path, existing["metrics"])

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
        work_area = self.store.work_area(key)
        with self.store.staging(self.run_id) as output_dir:
            metrics = compute(output_dir, work_area)
            seconds = time.perf_counter() - start_time
            # Read before publishing moves (or uploads) the staged files.
            summary = self.lineage.summarize_output(output_dir)
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
        self.store.remove_work_area(key)
        log.info("%s: published %s in %.1f s", stage, manifest["id"], seconds)
        self.lineage.stage_finished(stage, manifest, parents, external, "completed", summary=summary)
        path = self.store.data_location(manifest["id"])
        return StageOutcome(stage, "completed", manifest["id"], path, metrics, round(seconds, 3))


# Statuses of a ReuseProbe's outcomes.
WOULD_REUSE = "would-reuse"
WOULD_COMPUTE = "would-compute"


class ReuseProbe(StageRunner):
    """Stands in for a run's stage runner to ask a step, without running it, whether its stage is
    stored: `run` computes nothing and answers WOULD_REUSE or WOULD_COMPUTE as the outcome's status."""

    def __init__(self, runner: StageRunner) -> None:
        super().__init__(runner.store, runner.run_id, runner.forced, runner.lineage)

    def run(self, stage: str, kind: str, **kwargs: Any) -> StageOutcome:
        status = WOULD_REUSE if self.would_reuse(stage, kind, **kwargs) else WOULD_COMPUTE
        return StageOutcome(stage, status, artifact_id="", path="")
