"""Hub fallbacks: a data path that finds nothing locally is read from the hub, pinned to a commit; an
unreachable hub stops the run at once with one message naming every input and the way out."""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import pytest

from lmforge.app.config import PipelineConfig, apply_hub_fallbacks, resolve_inputs
from lmforge.core.configbase import identity_view, validate_config
from lmforge.core.errors import ConfigError
from lmforge.infra.data_paths import pin_hub_uris

pytestmark = pytest.mark.unit
SHA = "0123456789abcdef0123456789abcdef01234567"
WIKIPEDIA = {"path": "hf://wikimedia/wikipedia", "hf_name": "20231101.en", "max_documents": 50}
GLUE_TRAIN = "hf://nyu-mll/glue?config=sst2&split=train"
GLUE_DEV = "hf://nyu-mll/glue?config=sst2&split=validation"
WIKITEXT = "hf://Salesforce/wikitext?config=wikitext-2-raw-v1&split=validation"


def raw_config(data_dir=None, source=None, finetune=None, evaluation=None) -> dict:
    default_source = {"path": "enwiki/*.txt", "format": "text", "hub": WIKIPEDIA}
    return {
        "name": "fallback",
        "data_dir": str(data_dir) if data_dir else None,
        "corpus": {"sources": [source if source is not None else default_source]},
        "finetune": {"tasks": finetune if finetune is not None else [{"name": "sst2"}]},
        "evaluation": {
            "tasks": evaluation
            if evaluation is not None
            else [{"name": "sst2_icl"}, {"name": "wikitext_perplexity"}]
        },
    }


def make_config(data_dir=None, **sections) -> PipelineConfig:
    return validate_config(PipelineConfig, raw_config(data_dir, **sections))


def commit_of(dataset_id: str) -> str:
    return hashlib.sha1(dataset_id.encode()).hexdigest()


class FakeHub:
    """A resolver that records its lookups (they run in threads) and answers a commit per data set."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[str, str | None]] = []
        self.error = error
        self.lock = threading.Lock()

    def __call__(self, dataset_id: str, revision: str | None) -> str:
        with self.lock:
            self.calls.append((dataset_id, revision))
        if self.error is not None:
            raise self.error
        return commit_of(dataset_id)


def no_network(dataset_id: str, revision: str | None) -> str:
    raise AssertionError(f"the hub was asked for {dataset_id}")


def write_local_copies(data_dir, *relative_paths):
    for relative in relative_paths:
        path = data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentence\tlabel\nfine .\t1\n")


@pytest.fixture(autouse=True)
def no_data_dir_env(monkeypatch):
    monkeypatch.delenv("LMFORGE_DATA_DIR", raising=False)


def test_without_local_data_every_input_falls_back_to_its_hub_data_set_pinned(caplog):
    hub = FakeHub()
    with caplog.at_level(logging.INFO, logger="lmforge"):
        resolved = resolve_inputs(make_config(), hub)
    # One lookup per data set: SST-2's train and dev, in both tasks, share one commit.
    assert sorted(hub.calls) == [
        ("Salesforce/wikitext", None),
        ("nyu-mll/glue", None),
        ("wikimedia/wikipedia", None),
    ]
    source = resolved.corpus.sources[0]
    assert source.path == f"hf://wikimedia/wikipedia@{commit_of('wikimedia/wikipedia')}"
    assert (source.format, source.hf_name, source.hf_split, source.max_documents) == (
        "hf",
        "20231101.en",
        "train",
        50,
    )
    glue = commit_of("nyu-mll/glue")
    for task in (resolved.finetune.tasks[0], resolved.evaluation.tasks[0]):
        assert task.train_path == f"hf://nyu-mll/glue@{glue}?config=sst2&split=train"
        assert task.dev_path == f"hf://nyu-mll/glue@{glue}?config=sst2&split=validation"
    wikitext = commit_of("Salesforce/wikitext")
    assert resolved.evaluation.tasks[1].path == (
        f"hf://Salesforce/wikitext@{wikitext}?config=wikitext-2-raw-v1&split=validation"
    )
    assert "corpus.sources[0].path: 'enwiki/*.txt' finds nothing" in caplog.text
    assert "hf://wikimedia/wikipedia?config=20231101.en&split=train" in caplog.text
    assert (
        "finetune.tasks[0].train_path: 'sst2/train.tsv' finds nothing (no data directory set" in caplog.text
    )
    # Resolving again changes nothing and needs no network: recipes see the same URIs every time.
    assert resolve_inputs(resolved, no_network) == resolved


def test_local_copies_win_and_leave_the_config_unchanged(tmp_path):
    write_local_copies(tmp_path, "enwiki/a.txt", "sst2/train.tsv", "sst2/dev.tsv", "wikitext2_raw/valid.txt")
    config = make_config(tmp_path)
    assert resolve_inputs(config, no_network) == config


def test_only_missing_paths_fall_back(tmp_path, monkeypatch):
    write_local_copies(tmp_path, "sst2/train.tsv", "sst2/dev.tsv")
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path))
    config = make_config()
    fallen, fallbacks = apply_hub_fallbacks(config, config.resolved_data_dir())
    assert [fallback.key for fallback in fallbacks] == ["corpus.sources[0].path", "evaluation.tasks[1].path"]
    assert fallen.finetune == config.finetune and fallen.evaluation.tasks[0] == config.evaluation.tasks[0]
    assert fallen.evaluation.tasks[1].path == WIKITEXT
    hub = FakeHub()
    resolve_inputs(config, hub)
    assert sorted(dataset for dataset, _ in hub.calls) == ["Salesforce/wikitext", "wikimedia/wikipedia"]


def test_unreachable_hub_is_one_config_error_naming_every_input_and_the_way_out(tmp_path):
    with pytest.raises(ConfigError) as caught:
        resolve_inputs(make_config(), FakeHub(OSError("[Errno 111] Connection refused")))
    message = str(caught.value)
    for key, hub_name in [
        ("corpus.sources[0].path", "hf://wikimedia/wikipedia?config=20231101.en&split=train"),
        ("finetune.tasks[0].train_path", GLUE_TRAIN),
        ("finetune.tasks[0].dev_path", GLUE_DEV),
        ("evaluation.tasks[0].train_path", GLUE_TRAIN),
        ("evaluation.tasks[0].dev_path", GLUE_DEV),
        ("evaluation.tasks[1].path", WIKITEXT),
    ]:
        assert f"  {key}: " in message and hub_name in message
    assert "cannot read 6 input(s)" in message
    assert message.count("OSError: [Errno 111] Connection refused") == 1
    assert "LMFORGE_DATA_DIR=" in message and "no data directory is set" in message
    assert "(enwiki/*.txt, sst2/dev.tsv, sst2/train.tsv, wikitext2_raw/valid.txt)" in message
    # A data directory that lacks the files is named, so the user sees where nothing matched.
    with pytest.raises(ConfigError, match=f"the data directory is {tmp_path}"):
        resolve_inputs(make_config(tmp_path), FakeHub(OSError("down")))


def test_hub_inputs_without_local_path_name_the_commit_way_out():
    config = make_config(evaluation=[{"name": "wikitext_perplexity", "path": "hf://a/b"}])
    with pytest.raises(ConfigError) as caught:
        resolve_inputs(config, FakeHub(OSError("down")))
    assert "evaluation.tasks[0].path: tried hf://a/b" in str(caught.value)
    assert "hf://owner/name@<sha>" in str(caught.value)


def test_a_missing_path_without_fallback_is_the_usual_error_and_asks_no_hub():
    without_corpus_hub = make_config(source={"path": "enwiki/*.txt", "format": "text"})
    with pytest.raises(ConfigError, match=r"corpus.sources\[0\].path: relative data path 'enwiki/\*.txt'"):
        resolve_inputs(without_corpus_hub, no_network)
    # `hub: {}` turns a task's default fallbacks off.
    without_task_hub = make_config(source={"path": "hf://a/b@" + SHA}, finetune=[{"name": "sst2", "hub": {}}])
    with pytest.raises(ConfigError, match=r"finetune.tasks\[0\].dev_path: relative data path"):
        resolve_inputs(without_task_hub, no_network)


def test_a_hanging_hub_costs_the_deadline_not_the_client_timeouts():
    release = threading.Event()

    def hanging(dataset_id: str, revision: str | None) -> str:
        release.wait(30)
        return SHA

    started = time.monotonic()
    pinned, failed = pin_hub_uris({"a": GLUE_TRAIN, "b": WIKITEXT, "c": "local.txt"}, hanging, deadline_s=0.3)
    release.set()
    assert time.monotonic() - started < 2
    assert pinned == {} and set(failed) == {"a", "b"}
    assert failed["a"] == "TimeoutError: no answer within 0.3 s"


def test_fallbacks_are_typed_and_left_out_of_recipes():
    config = make_config()
    assert "hub" not in identity_view(config.corpus)["sources"][0]
    assert "hub" not in identity_view(config.finetune.tasks[0])
    assert config.finetune.tasks[0].hub == {"train_path": GLUE_TRAIN, "dev_path": GLUE_DEV}
    with pytest.raises(ConfigError, match="unknown data field 'trian_path'; did you mean 'train_path'"):
        make_config(finetune=[{"name": "sst2", "hub": {"trian_path": GLUE_TRAIN}}])
    with pytest.raises(ConfigError, match=r"finetune.tasks.0.hub: .*unknown parameters: conf"):
        make_config(finetune=[{"name": "sst2", "hub": {"train_path": "hf://a/b?conf=x"}}])
    with pytest.raises(ConfigError, match="hub.path: .*a hub fallback names a hub data set"):
        make_config(source={"path": "a.txt", "hub": {"path": "other/*.txt"}})
    with pytest.raises(ConfigError, match="corpus.sources.0.hub.hf_nam"):
        make_config(source={"path": "a.txt", "hub": {**WIKIPEDIA, "hf_nam": "x"}})
    with pytest.raises(ConfigError, match="a fallback is for local paths"):
        make_config(source={"path": "hf://a/b", "hub": WIKIPEDIA})


def test_decontamination_eval_sets_fall_back_to_the_hub_pinned(tmp_path):
    decontamination = {
        "eval_sets": [
            {
                "name": "sst2_dev",
                "path": "sst2/dev.tsv",
                "format": "tsv",
                "columns": ["sentence"],
                "hub": GLUE_DEV,
            },
            {"name": "wikitext", "path": "wikitext2_raw/valid.txt", "format": "text", "hub": WIKITEXT},
        ]
    }
    raw = raw_config(finetune=[], evaluation=[])
    raw["corpus"]["decontamination"] = decontamination
    resolved = resolve_inputs(validate_config(PipelineConfig, raw), FakeHub())
    sst2, wikitext = resolved.corpus.decontamination.eval_sets
    assert (sst2.format, sst2.columns) == ("hf", ["sentence"])
    assert sst2.path == f"hf://nyu-mll/glue@{commit_of('nyu-mll/glue')}?config=sst2&split=validation"
    # Plain text read from the hub is its `text` column, one example per row (line).
    assert (wikitext.format, wikitext.columns) == ("hf", ["text"])
    assert wikitext.path.startswith(f"hf://Salesforce/wikitext@{commit_of('Salesforce/wikitext')}?")
    # The fallback is operational: it is not part of the recipe, the data set read is.
    assert "hub" not in identity_view(resolved.corpus)["decontamination"]["eval_sets"][0]
    assert resolve_inputs(resolved, no_network) == resolved
    # With local copies nothing changes.
    write_local_copies(tmp_path, "enwiki/a.txt", "sst2/dev.tsv", "wikitext2_raw/valid.txt")
    raw["data_dir"] = str(tmp_path)
    local = validate_config(PipelineConfig, raw)
    assert resolve_inputs(local, no_network) == local
