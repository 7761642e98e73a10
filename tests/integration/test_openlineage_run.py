"""A real pipeline run with the OpenLineage file transport: events validate and chain raw inputs -> model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lmforge.app.config import PipelineConfig
from lmforge.core.configbase import load_config
from lmforge.infra import openlineage as ol
from tests.unit.test_openlineage import assert_valid, read_events, round_trip, without_client_facets

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The tiny preset made smaller still: this test is about events, not numbers.
SMALL = [
    "corpus.max_documents=300",
    "tokenizer.vocab_size=512",
    "pretrain.max_steps=4",
    "pretrain.warmup_steps=2",
    "pretrain.log_every=2",
    "pretrain.eval_every=4",
    "pretrain.checkpoint_every=4",
]
STAGES = ("clean", "tokenizer", "shard", "pretrain")


@pytest.fixture(scope="module")
def lineage_runs(tmp_path_factory, shared_data_dir, ray_runtime, prefect_server):
    """Two `--stage pretrain` runs into one store (the second reuses every stage), events to a file."""
    from lmforge.flows.pipeline import pipeline_flow

    tmp = tmp_path_factory.mktemp("openlineage")
    events = tmp / "events.jsonl"
    (tmp / "openlineage.yml").write_text(
        f"transport:\n  type: file\n  log_file_path: {events}\n  append: true\n"
    )
    saved = {key: value for key, value in os.environ.items() if key.startswith("OPENLINEAGE")}
    os.environ["OPENLINEAGE_CONFIG"] = str(tmp / "openlineage.yml")
    os.environ["LMFORGE_DATA_DIR"] = str(shared_data_dir)
    config = load_config(PipelineConfig, CONFIGS / "tiny.yaml", SMALL).model_dump(mode="json")
    try:
        records = [
            pipeline_flow(config=config, run_id=run_id, store=str(tmp / "store"), stage="pretrain")
            for run_id in ("lineage-first", "lineage-second")
        ]
    finally:
        for key in [key for key in os.environ if key.startswith("OPENLINEAGE")]:
            del os.environ[key]
        os.environ.update(saved)
    return records, read_events(events)


def events_of(events: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The events of one of our runs: its own and its stages' (which name it as their parent)."""
    own = ol.run_uuid(run_id)
    return [
        event
        for event in events
        if event["run"]["runId"] == own
        or event["run"]["facets"].get("parent", {}).get("run", {}).get("runId") == own
    ]


def chain_to_raw_inputs(events: list[dict[str, Any]], artifact: tuple[str, str]) -> set[tuple[str, str]]:
    """Walk COMPLETE events from an output back through their inputs; the raw inputs reached.

    Fails when an artifact on the way is not the output of one of these events.
    """
    producers = {
        (output["namespace"], output["name"]): event
        for event in events
        if event["eventType"] == "COMPLETE"
        for output in event["outputs"]
    }
    raw: set[tuple[str, str]] = set()
    pending, seen = [artifact], set()
    while pending:
        dataset = pending.pop()
        if dataset in seen:
            continue
        seen.add(dataset)
        if dataset[0] in ("file", "hf"):
            raw.add(dataset)
            continue
        assert dataset in producers, f"no COMPLETE event outputs {dataset}"
        pending += [(item["namespace"], item["name"]) for item in producers[dataset]["inputs"]]
    return raw


@pytest.mark.parametrize("run_id", ["lineage-first", "lineage-second"])
def test_run_events_validate_and_chain_from_raw_inputs_to_the_model(lineage_runs, shared_data_dir, run_id):
    records, all_events = lineage_runs
    record = records[0] if run_id == "lineage-first" else records[1]
    events = events_of(all_events, run_id)
    assert_valid(events)
    for event in events:
        assert round_trip(event) == without_client_facets(event)
    status = "completed" if run_id == "lineage-first" else "reused"
    assert [(e["eventType"], e["job"]["name"]) for e in events] == [
        ("START", "tiny"),
        *[(kind, f"tiny.{stage}") for stage in STAGES for kind in ("START", "COMPLETE")],
        ("COMPLETE", "tiny"),
    ]
    assert {
        e["run"]["facets"]["lmforge"]["status"] for e in events if e["job"]["name"] == "tiny.pretrain"
    } == ({"computing", "completed"} if status == "completed" else {"reused"})
    store = ol.store_namespace(record["store"])
    model = (store, record["stages"]["pretrain"]["artifact_id"])
    raw = chain_to_raw_inputs(events, model)
    # The corpus, and the eval set tiny.yaml's decontamination checks it against.
    assert raw == {
        ("file", str(shared_data_dir / "enwiki_extract" / "wiki_00.txt")),
        ("file", str(shared_data_dir / "sst2" / "dev.tsv")),
    }
    # Every stage's COMPLETE names the artifact run.json recorded, with our manifest's recipe key.
    for stage in STAGES:
        (complete,) = [
            e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"tiny.{stage}"
        ]
        artifact_id = record["stages"][stage]["artifact_id"]
        assert complete["outputs"][0]["name"] == artifact_id
        assert complete["run"]["facets"]["lmforge"]["artifact_id"] == artifact_id
    corpus = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == "tiny.clean"][0][
        "outputs"
    ][0]
    assert [field["name"] for field in corpus["facets"]["schema"]["fields"]] == [
        "doc_id",
        "source",
        "text",
        "language",
        "language_score",
    ]
    clean_metrics = record["stages"]["clean"]["metrics"]
    assert corpus["facets"]["lmforge_cleaning"]["num_kept"] == clean_metrics["num_kept"]
    assert corpus["facets"]["lmforge_cleaning"]["dropped"] == clean_metrics["dropped"]
    # The rejected-documents files inside the artifact are not rows of the corpus.
    assert corpus["outputFacets"]["outputStatistics"]["rowCount"] == clean_metrics["num_kept"]


def test_a_failing_run_emits_fail_for_its_stage_and_itself(
    tmp_path, shared_data_dir, ray_runtime, prefect_server, monkeypatch
):
    from lmforge.core.errors import EmptyCorpusError
    from lmforge.flows.pipeline import pipeline_flow

    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(events))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    config = load_config(
        PipelineConfig,
        CONFIGS / "tiny.yaml",
        ["corpus.max_documents=100", "corpus.filters=[{name: min_length, min_words: 1000000}]"],
    )
    with pytest.raises(EmptyCorpusError):
        pipeline_flow(
            config=config.model_dump(mode="json"), run_id="lineage-empty", store=str(tmp_path / "store")
        )
    emitted = read_events(events)
    assert_valid(emitted)
    assert [(e["eventType"], e["job"]["name"]) for e in emitted] == [
        ("START", "tiny"),
        ("START", "tiny.clean"),
        ("FAIL", "tiny.clean"),
        ("FAIL", "tiny"),
    ]
    for event in emitted[2:]:
        assert event["run"]["facets"]["errorMessage"]["message"].startswith("EmptyCorpusError: all ")
