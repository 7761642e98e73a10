"""OpenLineage run events for a pipeline run and each of its stages (openlineage-python client).

Events go wherever the client's standard configuration sends them: an `OPENLINEAGE_CONFIG` file,
`openlineage.yml` in the working directory or `~/.openlineage/`, `OPENLINEAGE__TRANSPORT__*`
variables, or `OPENLINEAGE_URL` (HTTP). With none of these, nothing is emitted and nothing printed
(the client itself would fall back to printing every event). See docs/lineage.md.

Datasets are store artifacts (namespace: the store as a URI, name: the artifact id) and raw inputs
(local files by path, hub data sets by `owner/name` pinned to a revision). Emitting never fails a
stage: the first failure is logged as a warning, later ones at debug level.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import traceback
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client.event_v2 import (
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    set_producer,
)
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    data_quality_metrics_dataset,
    dataset_version_dataset,
    error_message_run,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)

from lmforge.core.logs import get_logger
from lmforge.infra.remote_fs import is_url

log = get_logger(__name__)

PRODUCER = "urn:lmforge"  # no public home page to point at; a URN is a valid producer URI
JOB_NAMESPACE_ENV = "OPENLINEAGE_NAMESPACE"
DEFAULT_JOB_NAMESPACE = "lmforge"
# Our facets' JSON Schema is described in docs/lineage.md; the URL names it, nothing fetches it.
FACETS_SCHEMA = "https://lmforge.invalid/openlineage/facets/1-0-0/LmforgeFacets.json"
# Run ids are uuid5 of our run id (and stage) in this namespace: one stage's events share a runId.
RUN_ID_NAMESPACE = uuid.UUID("5f0c6c3e-8d0f-4b7e-9a51-3f2d1c0b6a77")
HF_PREFIX = "hf://"
Facets = dict[str, Any]
ParquetSummary = tuple[list[tuple[str, str]], int]  # ((column, type), ...), total rows


@attr.define
class LmforgeRunFacet(RunFacet):
    """What our manifest says about the stage's artifact: its recipe and the code that made it."""

    stage: str
    status: str  # computing, completed, reused or failed
    recipe_key: str
    code_fingerprint: str | None = attr.field(default=None)
    git_commit: str | None = attr.field(default=None)
    git_dirty: bool | None = attr.field(default=None)
    lmforge_version: str | None = attr.field(default=None)
    artifact_id: str | None = attr.field(default=None)
    content_id: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACETS_SCHEMA + "#/$defs/LmforgeRunFacet"


@attr.define
class LmforgeCleaningDatasetFacet(DatasetFacet):
    """The cleaning counts of a corpus: documents read, kept, and dropped per reason."""

    num_read: int
    num_kept: int
    num_dropped: int
    dropped: dict[str, int] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return FACETS_SCHEMA + "#/$defs/LmforgeCleaningDatasetFacet"


def lineage_configured() -> bool:
    """Whether the OpenLineage client's standard configuration names a destination."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OPENLINEAGE_URL") or any(
        key.startswith("OPENLINEAGE__TRANSPORT") for key in os.environ
    ):
        return True
    candidates = (os.environ.get("OPENLINEAGE_CONFIG"), "openlineage.yml", "~/.openlineage/openlineage.yml")
    return any(path and Path(path).expanduser().is_file() for path in candidates)


def open_client() -> Any | None:
    """The client as its standard configuration resolves it; None when nothing is configured."""
    if not lineage_configured():
        return None
    from openlineage.client import OpenLineageClient

    return OpenLineageClient()


def run_uuid(run_id: str, stage: str | None = None) -> str:
    """The OpenLineage runId of our run (stage None) or of one of its stages."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, run_id if stage is None else f"{run_id}/{stage}"))


def store_namespace(location: str) -> str:
    """A store's location as a URI: `file:///abs/path`, or its URL."""
    return location.rstrip("/") if is_url(location) else Path(location).resolve().as_uri()


def raw_input_dataset(record: dict[str, Any]) -> InputDataset:
    """A raw input from a manifest's external_files record (uri, path, sha256)."""
    uri, path = record["uri"], record.get("path")
    version: str | None = record.get("sha256")
    if uri.startswith(HF_PREFIX):
        from lmforge.infra.data_paths import split_revision

        unpinned, revision = split_revision(uri)
        namespace, name, version = "hf", unpinned[len(HF_PREFIX) :], revision
    elif path is not None:
        namespace, name = "file", str(Path(path).resolve())
    elif "://" in uri:
        parts = urlsplit(uri)
        namespace, name = f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"
    else:
        namespace, name = "file", uri
    facets: Facets = {}
    if version:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)
    return InputDataset(namespace=namespace, name=name, facets=facets)


def parquet_summary(data_dir: Path) -> ParquetSummary | None:
    """((column, type) of the Parquet files' schema, their total rows); None without Parquet files.
    A clean stage's audit files (`rejected/`) are not rows of the data set."""
    import pyarrow.parquet as pq

    files = sorted(
        path
        for path in data_dir.rglob("*.parquet")
        if path.is_file() and "rejected" not in path.relative_to(data_dir).parts[:-1]
    )
    if not files:
        return None
    schema = pq.read_schema(files[0])
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    return [(field.name, str(field.type)) for field in schema], rows


def manifest_facet(stage: str, status: str, manifest: dict[str, Any]) -> LmforgeRunFacet:
    """Our run facet for a stored artifact: recipe key, code version, artifact and content ids."""
    code = manifest.get("code") or {}
    return LmforgeRunFacet(
        stage=stage,
        status=status,
        recipe_key=manifest["recipe_key"],
        code_fingerprint=code.get("fingerprint"),
        git_commit=code.get("git_commit"),
        git_dirty=code.get("git_dirty"),
        lmforge_version=code.get("lmforge_version"),
        artifact_id=manifest["id"],
        content_id=manifest["content_id"],
    )


def output_facets(manifest: dict[str, Any], parquet: ParquetSummary | None) -> tuple[Facets, Facets]:
    """(dataset facets, output facets) of a published artifact."""
    files = manifest.get("files") or []
    size = sum(int(record.get("size") or 0) for record in files)
    rows = parquet[1] if parquet else None
    facets: Facets = {
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=manifest["content_id"])
    }
    if parquet:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[
                schema_dataset.SchemaDatasetFacetFields(name=name, type=kind) for name, kind in parquet[0]
            ]
        )
    metrics = manifest.get("metrics") or {}
    if isinstance(metrics.get("num_read"), int) and isinstance(metrics.get("num_kept"), int):
        facets["dataQualityMetrics"] = data_quality_metrics_dataset.DataQualityMetricsDatasetFacet(
            columnMetrics={}, rowCount=metrics["num_kept"], bytes=size, fileCount=len(files)
        )
        facets["lmforge_cleaning"] = LmforgeCleaningDatasetFacet(
            num_read=metrics["num_read"],
            num_kept=metrics["num_kept"],
            num_dropped=int(metrics.get("num_dropped", metrics["num_read"] - metrics["num_kept"])),
            dropped={str(k): int(v) for k, v in (metrics.get("dropped") or {}).items()},
        )
    statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=rows, size=size, fileCount=len(files)
    )
    return facets, {"outputStatistics": statistics}


class RunLineage:
    """The OpenLineage events of one pipeline run: the run's own job and one job per stage.

    Job names: `<pipeline>` for the run and `<pipeline>.<stage>` for a stage, where <pipeline> is the
    config's name once `pipeline_started` is called (`lmforge` before). Safe to call from the
    fan-out's threads.
    """

    def __init__(self, store_location: str, run_id: str, client: Any | None = None) -> None:
        self.client = client
        if client is not None:
            set_producer(PRODUCER)  # facets name their producer from this process-wide default
        self.run_id = run_id
        self.store_namespace = store_namespace(store_location)
        self.job_namespace = os.environ.get(JOB_NAMESPACE_ENV) or DEFAULT_JOB_NAMESPACE
        self.pipeline = "lmforge"
        self.pipeline_running = False
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(cls, store_location: str, run_id: str) -> RunLineage:
        try:
            client = open_client()
        except Exception as err:  # a broken lineage config must not stop a run
            log.warning("OpenLineage: cannot set up the client (%s); no lineage events", err)
            client = None
        return cls(store_location, run_id, client)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # -- the pipeline's own run ----------------------------------------------------------------------

    def pipeline_started(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.pipeline_running = True
        self._emit(lambda: self._event(RunState.START, self.pipeline, run_uuid(self.run_id), {}))

    def pipeline_finished(self, state: RunState, error: BaseException | None = None) -> None:
        """COMPLETE, FAIL (with the error) or ABORT (a cancelled run)."""
        facets = error_facets(error) if error is not None else {}
        self._emit(lambda: self._event(state, self.pipeline, run_uuid(self.run_id), facets))

    # -- stages ---------------------------------------------------------------------------------------

    def stage_started(self, stage: str, parents: list[str], external: list[dict[str, Any]], key: str) -> None:
        facets = {"lmforge": LmforgeRunFacet(stage=stage, status="computing", recipe_key=key)}
        self._emit(lambda: self._stage_event(RunState.START, stage, facets, parents, external))

    def stage_failed(
        self, stage: str, parents: list[str], external: list[dict[str, Any]], key: str, error: BaseException
    ) -> None:
        """FAIL for an error; ABORT for a cancellation (Ctrl-C, a termination signal)."""
        state = RunState.FAIL if isinstance(error, Exception) else RunState.ABORT
        facets = {
            "lmforge": LmforgeRunFacet(stage=stage, status="failed", recipe_key=key),
            **error_facets(error),
        }
        self._emit(lambda: self._stage_event(state, stage, facets, parents, external))

    def summarize_output(self, data_dir: Path) -> ParquetSummary | None:
        """The Parquet schema and rows of a staged artifact, for its COMPLETE event (None when off)."""
        if self.client is None:
            return None
        try:
            return parquet_summary(data_dir)
        except Exception as err:  # an unreadable footer costs the schema facet, not the stage
            log.debug("OpenLineage: cannot read the Parquet schema under %s: %s", data_dir, err)
            return None

    def stage_finished(
        self,
        stage: str,
        manifest: dict[str, Any],
        parents: list[str],
        external: list[dict[str, Any]],
        status: str,
        data_dir: Path | None = None,
        summary: ParquetSummary | None = None,
    ) -> None:
        """COMPLETE with the artifact as output; a reused artifact gets its START first.

        `summary`: the artifact's Parquet summary; else it is read from `data_dir`, a local copy of
        the artifact's files, when given.
        """
        if self.client is None:
            return
        if summary is None and data_dir is not None:
            summary = self.summarize_output(data_dir)

        def events() -> list[RunEvent]:
            facets: Facets = {"lmforge": manifest_facet(stage, status, manifest)}
            dataset_facets, statistics = output_facets(manifest, summary)
            output = OutputDataset(
                namespace=self.store_namespace,
                name=manifest["id"],
                facets=dataset_facets,
                outputFacets=statistics,
            )
            complete = self._stage_event(RunState.COMPLETE, stage, facets, parents, external, [output])
            if status != "reused":
                return [complete]
            return [self._stage_event(RunState.START, stage, facets, parents, external), complete]

        self._emit(events)

    # -- building and sending ---------------------------------------------------------------------------

    def _stage_event(
        self,
        state: RunState,
        stage: str,
        facets: Facets,
        parents: list[str],
        external: list[dict[str, Any]],
        outputs: list[OutputDataset] | None = None,
    ) -> RunEvent:
        run_facets = dict(facets)
        if self.pipeline_running:
            run_facets["parent"] = self._parent_facet()
        inputs = [self.artifact_input(parent) for parent in parents]
        inputs += [raw_input_dataset(record) for record in external]
        return self._event(
            state, f"{self.pipeline}.{stage}", run_uuid(self.run_id, stage), run_facets, inputs, outputs
        )

    def artifact_input(self, artifact_id: str) -> InputDataset:
        return InputDataset(namespace=self.store_namespace, name=artifact_id)

    def _parent_facet(self) -> parent_run.ParentRunFacet:
        run_id, job = run_uuid(self.run_id), self.pipeline
        return parent_run.ParentRunFacet(
            run=parent_run.Run(runId=run_id),
            job=parent_run.Job(namespace=self.job_namespace, name=job),
            root=parent_run.Root(
                run=parent_run.RootRun(runId=run_id),
                job=parent_run.RootJob(namespace=self.job_namespace, name=job),
            ),
        )

    def _event(
        self,
        state: RunState,
        job: str,
        run_id: str,
        facets: Facets,
        inputs: Iterable[InputDataset] = (),
        outputs: Iterable[OutputDataset] | None = None,
    ) -> RunEvent:
        return RunEvent(
            eventType=state,
            eventTime=event_time(),
            run=Run(runId=run_id, facets=facets),
            job=Job(namespace=self.job_namespace, name=job),
            inputs=list(inputs),
            outputs=list(outputs or []),
            producer=PRODUCER,
        )

    def _emit(self, build: Any) -> None:
        """Build and send events (`build` returns one or a list); a failure is logged, never raised."""
        if self.client is None:
            return
        try:
            built = build()
            with self._lock:
                for event in built if isinstance(built, list) else [built]:
                    self.client.emit(event)
        except Exception as err:
            with self._lock:
                first, self._warned = not self._warned, True
            (log.warning if first else log.debug)(
                "OpenLineage: could not emit an event (%s: %s); the run goes on", type(err).__name__, err
            )

    def close(self) -> None:
        """Let the transport send what it buffered (an async HTTP transport); never raises."""
        if self.client is None:
            return
        try:
            self.client.close(timeout=10.0)
        except Exception as err:
            log.debug("OpenLineage: closing the client failed: %s", err)


def event_time() -> str:
    # Milliseconds: a stage's START and COMPLETE may fall in the same second, and consumers order by time.
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def error_facets(error: BaseException) -> Facets:
    message = f"{type(error).__name__}: {error}".rstrip(": ")
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return {
        "errorMessage": error_message_run.ErrorMessageRunFacet(
            message=message, programmingLanguage="python", stackTrace=stack
        )
    }
