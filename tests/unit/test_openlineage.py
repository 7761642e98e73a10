"""OpenLineage run events from the stage runner: content, schema, failure, no config, HTTP transport."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attr
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    data_quality_metrics_dataset,
    dataset_version_dataset,
    error_message_run,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.serde import Serde

from lmforge.infra import openlineage as ol
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile

pytestmark = pytest.mark.unit
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "openlineage"
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
HF_URI = "hf://owner/corpus@" + "a" * 40 + "?split=train"

# -- validation (shared with tests/integration/test_openlineage_run.py) ------------------------------


def format_checker() -> FormatChecker:
    """jsonschema's checker, plus "uri" (its own needs a package we do not install)."""
    checker = FormatChecker()
    checker.checks("uri")(lambda value: not isinstance(value, str) or bool(URI_SCHEME.match(value)))
    return checker


def validators() -> tuple[Draft202012Validator, dict[str, Draft202012Validator]]:
    """(RunEvent validator, validators of our custom facets by their _schemaURL)."""
    event_schema = json.loads((SCHEMAS / "run_event.schema.json").read_text())
    facets_schema = json.loads((SCHEMAS / "lmforge_facets.schema.json").read_text())
    Draft202012Validator.check_schema(event_schema)
    checker = format_checker()
    custom = {
        f"{ol.FACETS_SCHEMA}#/$defs/{name}": Draft202012Validator(
            {**facets_schema, "$ref": f"#/$defs/{name}"}, format_checker=checker
        )
        for name in facets_schema["$defs"]
    }
    return Draft202012Validator(event_schema, format_checker=checker), custom


def all_facets(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (event["run"].get("facets") or {}).values()
    yield from (event["job"].get("facets") or {}).values()
    for dataset in [*event.get("inputs", []), *event.get("outputs", [])]:
        for group in ("facets", "inputFacets", "outputFacets"):
            yield from (dataset.get(group) or {}).values()


def assert_valid(events: list[dict[str, Any]]) -> None:
    """Every event against our transcription of the spec; our facets against their own schema."""
    event_validator, custom = validators()
    for event in events:
        event_validator.validate(event)
        for facet in all_facets(event):
            if facet["_schemaURL"].startswith(ol.FACETS_SCHEMA):
                custom[facet["_schemaURL"]].validate(facet)


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the client's typed classes: rebuild an event from its JSON and serialize it again ---------------

TYPED_FACETS: dict[str, Any] = {
    "parent": lambda d: parent_run.ParentRunFacet(
        run=parent_run.Run(runId=d["run"]["runId"]),
        job=parent_run.Job(namespace=d["job"]["namespace"], name=d["job"]["name"]),
        root=parent_run.Root(
            run=parent_run.RootRun(runId=d["root"]["run"]["runId"]),
            job=parent_run.RootJob(namespace=d["root"]["job"]["namespace"], name=d["root"]["job"]["name"]),
        ),
        producer=d["_producer"],
    ),
    "errorMessage": lambda d: error_message_run.ErrorMessageRunFacet(
        message=d["message"],
        programmingLanguage=d["programmingLanguage"],
        stackTrace=d.get("stackTrace"),
        producer=d["_producer"],
    ),
    "schema": lambda d: schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=f["name"], type=f.get("type")) for f in d["fields"]
        ],
        producer=d["_producer"],
    ),
    "version": lambda d: dataset_version_dataset.DatasetVersionDatasetFacet(
        datasetVersion=d["datasetVersion"], producer=d["_producer"]
    ),
    "dataQualityMetrics": lambda d: data_quality_metrics_dataset.DataQualityMetricsDatasetFacet(
        columnMetrics={},
        rowCount=d.get("rowCount"),
        bytes=d.get("bytes"),
        fileCount=d.get("fileCount"),
        producer=d["_producer"],
    ),
    "outputStatistics": lambda d: output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=d.get("rowCount"), size=d.get("size"), fileCount=d.get("fileCount"), producer=d["_producer"]
    ),
    "lmforge": lambda d: ol.LmforgeRunFacet(
        **{k: v for k, v in d.items() if not k.startswith("_")}, producer=d["_producer"]
    ),
    "lmforge_cleaning": lambda d: ol.LmforgeCleaningDatasetFacet(
        **{k: v for k, v in d.items() if not k.startswith("_")}, producer=d["_producer"]
    ),
}


def typed(facets: dict[str, Any] | None) -> dict[str, Any]:
    """Our facets as the client's classes; those the client adds itself (tags) are left out."""
    return {name: TYPED_FACETS[name](value) for name, value in (facets or {}).items() if name in TYPED_FACETS}


def round_trip(event: dict[str, Any]) -> dict[str, Any]:
    """The event rebuilt with the client's typed classes (their validators run) and serialized again."""
    rebuilt = RunEvent(
        eventType=RunState(event["eventType"]),
        eventTime=event["eventTime"],
        run=Run(runId=event["run"]["runId"], facets=typed(event["run"].get("facets"))),
        job=Job(
            namespace=event["job"]["namespace"],
            name=event["job"]["name"],
            facets=typed(event["job"].get("facets")),
        ),
        inputs=[
            InputDataset(namespace=d["namespace"], name=d["name"], facets=typed(d.get("facets")))
            for d in event["inputs"]
        ],
        outputs=[
            OutputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=typed(d.get("facets")),
                outputFacets=typed(d.get("outputFacets")),
            )
            for d in event["outputs"]
        ],
        producer=event["producer"],
    )
    return dict(Serde.to_dict(rebuilt))


def without_client_facets(event: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(event))
    copy["run"]["facets"] = {k: v for k, v in copy["run"].get("facets", {}).items() if k in TYPED_FACETS}
    copy["job"]["facets"] = {k: v for k, v in copy["job"].get("facets", {}).items() if k in TYPED_FACETS}
    return copy


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def clean_lineage_env(tmp_path, monkeypatch):
    """No OpenLineage configuration anywhere (the client also edits os.environ itself: restored)."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("OPENLINEAGE")}
    for key in saved:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    yield
    for key in [key for key in os.environ if key.startswith("OPENLINEAGE")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def file_transport(tmp_path, clean_lineage_env, monkeypatch) -> Path:
    """The file transport, configured the standard way: an OPENLINEAGE_CONFIG file."""
    events = tmp_path / "events.jsonl"
    config = tmp_path / "lineage.yml"
    config.write_text(f"transport:\n  type: file\n  log_file_path: {events}\n  append: true\n")
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(config))
    return events


CLEAN_METRICS = {"num_read": 5, "num_kept": 2, "num_dropped": 3, "dropped": {"min_length": 2, "duplicate": 1}}


def write_corpus(out: Path, _work: str) -> dict[str, Any]:
    table = pa.table({"doc_id": ["a", "b"], "text": ["first doc", "second doc"]})
    pq.write_table(table, out / "part-00000.parquet")
    return dict(CLEAN_METRICS)


def run_two_stages(store: ArtifactStore, raw: Path, run_id: str = "run-1") -> tuple[StageRunner, Any, Any]:
    runner = StageRunner(store, run_id)
    runner.lineage.pipeline_started("demo")
    inputs = [ExternalFile("raw/docs.txt", raw), ExternalFile(HF_URI, None)]
    cleaned = runner.run(
        "clean", "corpus", config={"a": 1}, parents=[], code=(), compute=write_corpus, external_files=inputs
    )

    def write_vocab(out: Path, _work: str) -> dict[str, Any]:
        (out / "vocab.json").write_text('{"a": 0}')
        return {"vocab_size": 1}

    tokenizer = runner.run(
        "tokenizer", "tokenizer", config={"v": 1}, parents=[cleaned.artifact_id], code=(), compute=write_vocab
    )
    return runner, cleaned, tokenizer


@pytest.fixture
def raw_file(tmp_path) -> Path:
    raw = tmp_path / "raw" / "docs.txt"
    raw.parent.mkdir()
    raw.write_text("some raw text\n")
    return raw


# -- tests ---------------------------------------------------------------------------------------------


def test_events_carry_datasets_and_facets(tmp_path, file_transport, raw_file):
    store = ArtifactStore(tmp_path / "store")
    runner, cleaned, tokenizer = run_two_stages(store, raw_file)
    runner.lineage.pipeline_finished(RunState.COMPLETE)
    events = read_events(file_transport)
    assert [(e["eventType"], e["job"]["name"]) for e in events] == [
        ("START", "demo"),
        ("START", "demo.clean"),
        ("COMPLETE", "demo.clean"),
        ("START", "demo.tokenizer"),
        ("COMPLETE", "demo.tokenizer"),
        ("COMPLETE", "demo"),
    ]
    assert_valid(events)
    namespace = (tmp_path / "store").resolve().as_uri()
    assert namespace.startswith("file:///")
    start, complete = events[1], events[2]
    # One stage's events share a runId: uuid5 of our run id and the stage; the parent is the run's.
    assert start["run"]["runId"] == complete["run"]["runId"] == ol.run_uuid("run-1", "clean")
    assert uuid.UUID(complete["run"]["runId"]).version == 5
    assert events[0]["run"]["runId"] == ol.run_uuid("run-1") != ol.run_uuid("run-1", "clean")
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == ol.run_uuid("run-1")
    parent_job = complete["run"]["facets"]["parent"]["job"]
    assert (parent_job["namespace"], parent_job["name"]) == ("lmforge", "demo")
    # Raw inputs: a local file by absolute path, a hub data set by name, each with its version.
    assert [
        (d["namespace"], d["name"], d["facets"]["version"]["datasetVersion"]) for d in start["inputs"]
    ] == [
        ("file", str(raw_file.resolve()), store.get(cleaned.artifact_id)["external_files"][0]["sha256"]),
        ("hf", "owner/corpus?split=train", "a" * 40),
    ]
    assert start["outputs"] == []
    manifest = store.get(cleaned.artifact_id)
    (output,) = complete["outputs"]
    assert (output["namespace"], output["name"]) == (namespace, cleaned.artifact_id)
    assert output["facets"]["version"]["datasetVersion"] == manifest["content_id"]
    assert [(f["name"], f["type"]) for f in output["facets"]["schema"]["fields"]] == [
        ("doc_id", "string"),
        ("text", "string"),
    ]
    size = sum(record["size"] for record in manifest["files"])
    assert output["outputFacets"]["outputStatistics"] == {
        **output["outputFacets"]["outputStatistics"],
        "rowCount": 2,
        "size": size,
        "fileCount": len(manifest["files"]),
    }
    assert output["facets"]["dataQualityMetrics"]["rowCount"] == CLEAN_METRICS["num_kept"]
    cleaning = {k: v for k, v in output["facets"]["lmforge_cleaning"].items() if not k.startswith("_")}
    assert cleaning == CLEAN_METRICS
    ours = complete["run"]["facets"]["lmforge"]
    assert ours["_schemaURL"] == f"{ol.FACETS_SCHEMA}#/$defs/LmforgeRunFacet"
    assert (ours["recipe_key"], ours["artifact_id"], ours["content_id"], ours["status"]) == (
        manifest["recipe_key"],
        cleaned.artifact_id,
        manifest["content_id"],
        "completed",
    )
    assert (ours["code_fingerprint"], ours.get("git_commit"), ours.get("git_dirty")) == (
        manifest["code"]["fingerprint"],
        manifest["code"]["git_commit"],
        manifest["code"]["git_dirty"],
    )
    # The chain: the tokenizer's input is exactly the corpus its clean stage output.
    assert [(d["namespace"], d["name"]) for d in events[3]["inputs"]] == [(namespace, cleaned.artifact_id)]
    assert events[4]["outputs"][0]["name"] == tokenizer.artifact_id
    assert "schema" not in events[4]["outputs"][0]["facets"]  # no Parquet in a tokenizer
    assert "dataQualityMetrics" not in events[4]["outputs"][0]["facets"]


def test_events_round_trip_through_the_clients_classes(tmp_path, file_transport, raw_file):
    runner, _, _ = run_two_stages(ArtifactStore(tmp_path / "store"), raw_file)
    with pytest.raises(ZeroDivisionError):
        runner.run("shard", "shards", config={}, parents=[], code=(), compute=lambda out, work: 1 // 0)
    events = read_events(file_transport)
    assert {e["eventType"] for e in events} == {"START", "COMPLETE", "FAIL"}
    for event in events:
        assert round_trip(event) == without_client_facets(event)


def test_reused_stage_emits_start_and_complete_marked_reused(tmp_path, file_transport, raw_file):
    store = ArtifactStore(tmp_path / "store")
    _, cleaned, tokenizer = run_two_stages(store, raw_file, "run-1")
    first = len(read_events(file_transport))
    _, again, _ = run_two_stages(store, raw_file, "run-2")
    assert again.status == "reused"
    events = read_events(file_transport)[first:]
    assert_valid(events)
    stages = [e for e in events if e["job"]["name"] != "demo"]
    assert [(e["eventType"], e["job"]["name"], e["run"]["facets"]["lmforge"]["status"]) for e in stages] == [
        ("START", "demo.clean", "reused"),
        ("COMPLETE", "demo.clean", "reused"),
        ("START", "demo.tokenizer", "reused"),
        ("COMPLETE", "demo.tokenizer", "reused"),
    ]
    assert stages[1]["run"]["runId"] == ol.run_uuid("run-2", "clean")
    assert stages[1]["outputs"][0]["name"] == cleaned.artifact_id
    assert len(stages[1]["inputs"]) == 2  # a reused stage still names its raw inputs
    assert stages[1]["outputs"][0]["facets"]["schema"]["fields"][0]["name"] == "doc_id"
    assert stages[3]["outputs"][0]["name"] == tokenizer.artifact_id


def test_failing_stage_emits_fail_with_the_error_and_reraises(tmp_path, file_transport, raw_file):
    store = ArtifactStore(tmp_path / "store")
    runner, cleaned, _ = run_two_stages(store, raw_file)

    def broken(out: Path, _work: str) -> dict[str, Any]:
        raise ValueError("shard size must be positive")

    with pytest.raises(ValueError, match="shard size"):
        runner.run("shard", "shards", config={}, parents=[cleaned.artifact_id], code=(), compute=broken)
    start, fail = read_events(file_transport)[-2:]
    assert_valid([start, fail])
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert start["run"]["runId"] == fail["run"]["runId"]
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: shard size must be positive"
    assert error["programmingLanguage"] == "python"
    assert "in broken" in error["stackTrace"]
    assert fail["run"]["facets"]["lmforge"]["status"] == "failed"
    assert fail["inputs"][0]["name"] == cleaned.artifact_id and fail["outputs"] == []


def test_a_cancelled_stage_emits_abort(tmp_path, file_transport):
    runner = StageRunner(ArtifactStore(tmp_path / "store"), "run-1")

    def interrupted(out: Path, _work: str) -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run("clean", "corpus", config={}, parents=[], code=(), compute=interrupted)
    assert [e["eventType"] for e in read_events(file_transport)] == ["START", "ABORT"]


def test_no_configuration_emits_and_prints_nothing(tmp_path, clean_lineage_env, raw_file, capfd, caplog):
    assert not ol.lineage_configured()
    runner, _, _ = run_two_stages(ArtifactStore(tmp_path / "store"), raw_file)
    assert runner.lineage.client is None
    out, err = capfd.readouterr()
    assert "eventType" not in out + err and "OpenLineage" not in out + err
    assert not [r for r in caplog.records if "openlineage" in r.name.lower()]
    assert not list(tmp_path.glob("**/*.jsonl"))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OPENLINEAGE_URL", "http://127.0.0.1:9"), ("OPENLINEAGE__TRANSPORT__TYPE", "console")],
)
def test_standard_environment_variables_turn_events_on(clean_lineage_env, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert ol.lineage_configured()
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert not ol.lineage_configured()


def test_openlineage_yml_in_the_working_directory_turns_events_on(tmp_path, clean_lineage_env):
    assert not ol.lineage_configured()
    (tmp_path / "openlineage.yml").write_text("transport:\n  type: console\n")
    assert ol.lineage_configured()
    assert ol.open_client().transport.kind == "console"


class Receiver(BaseHTTPRequestHandler):
    """Collects posted events; answers with the server's `status`."""

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_transport_posts_events_to_a_receiver(
    tmp_path, clean_lineage_env, monkeypatch, receiver, raw_file
):
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{receiver.server_port}")
    runner, cleaned, _ = run_two_stages(ArtifactStore(tmp_path / "store"), raw_file)
    assert runner.lineage.client.transport.kind == "http"
    received = receiver.received  # type: ignore[attr-defined]
    assert {path for path, _ in received} == {"/api/v1/lineage"}
    events = [event for _, event in received]
    assert [(e["eventType"], e["job"]["name"]) for e in events] == [
        ("START", "demo"),
        ("START", "demo.clean"),
        ("COMPLETE", "demo.clean"),
        ("START", "demo.tokenizer"),
        ("COMPLETE", "demo.tokenizer"),
    ]
    assert_valid(events)
    assert events[2]["outputs"][0]["name"] == cleaned.artifact_id


def test_a_failing_receiver_never_fails_a_stage(tmp_path, clean_lineage_env, receiver, raw_file, caplog):
    receiver.status = 500  # type: ignore[attr-defined]
    # An openlineage.yml in the working directory, without the client's retries (they only cost time).
    (tmp_path / "openlineage.yml").write_text(
        f"transport:\n  type: http\n  url: http://127.0.0.1:{receiver.server_port}\n  retry:\n    total: 0\n"
    )
    caplog.set_level("DEBUG", logger="lmforge.infra.openlineage")
    _, cleaned, tokenizer = run_two_stages(ArtifactStore(tmp_path / "store"), raw_file)
    assert cleaned.status == tokenizer.status == "completed"
    assert len(receiver.received) == 5  # type: ignore[attr-defined]  # every event was tried
    warnings = [
        r for r in caplog.records if r.name == "lmforge.infra.openlineage" and r.levelname == "WARNING"
    ]
    assert len(warnings) == 1 and "could not emit" in warnings[0].getMessage()


def test_schema_rejects_what_the_spec_forbids():
    """The transcribed schema is not vacuous: each broken field is caught."""
    validator, custom = validators()
    good = {
        "eventTime": "2026-01-01T00:00:00.000+00:00",
        "producer": "urn:lmforge",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "eventType": "START",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "lmforge", "name": "demo"},
        "inputs": [{"namespace": "file", "name": "/x"}],
    }
    validator.validate(good)
    broken = [
        {**good, "eventType": "DONE"},
        {**good, "eventTime": "yesterday"},
        {**good, "producer": "not a uri"},
        {**good, "run": {"runId": "run-1"}},
        {**good, "job": {"namespace": "lmforge"}},
        {**good, "inputs": [{"namespace": "file"}]},
        {**good, "run": {"runId": good["run"]["runId"], "facets": {"x": {"_producer": "urn:lmforge"}}}},
    ]
    for event in broken:
        assert not validator.is_valid(event), event
    facet = Serde.to_dict(ol.LmforgeRunFacet(stage="clean", status="computing", recipe_key="0" * 64))
    run_facet = custom[f"{ol.FACETS_SCHEMA}#/$defs/LmforgeRunFacet"]
    run_facet.validate(facet)
    assert not run_facet.is_valid({**facet, "status": "done"})
    assert not run_facet.is_valid({**facet, "recipeKey": "x"})


def test_store_namespace_and_raw_input_names():
    assert ol.store_namespace("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert ol.store_namespace("/tmp/store") == "file:///tmp/store"
    remote = ol.raw_input_dataset({"uri": "s3://data/c4/part-0.json", "path": None, "sha256": None})
    assert (remote.namespace, remote.name, remote.facets) == ("s3://data", "c4/part-0.json", {})
    unpinned = ol.raw_input_dataset({"uri": "hf://owner/name?split=dev", "path": None, "sha256": None})
    assert (unpinned.namespace, unpinned.name, unpinned.facets) == ("hf", "owner/name?split=dev", {})
    assert attr.has(type(unpinned))
