"""hf:// inputs are pinned to a hub commit before recipes are computed, and readers load that commit."""

from __future__ import annotations

import pytest

from lmforge.app.config import PipelineConfig, pin_hub_revisions
from lmforge.core.errors import DataError
from lmforge.infra.data_paths import pin_hub_uri, split_revision
from lmforge.tasks.data import parse_hf_uri

pytestmark = pytest.mark.unit
SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(calls: list):
    def resolve(dataset_id: str, revision: str | None) -> str:
        calls.append((dataset_id, revision))
        return SHA

    return resolve


def test_pinning_rewrites_every_hub_uri_and_leaves_files_alone():
    calls: list = []
    config = PipelineConfig.model_validate(
        {
            "name": "pinned",
            "corpus": {"sources": [{"path": "hf://allenai/c4?x=1", "format": "hf"}, {"path": "a.txt"}]},
            "evaluation": {
                "tasks": [{"name": "wikitext_perplexity", "path": "hf://Salesforce/wikitext@main"}]
            },
        }
    )
    pinned = pin_hub_revisions(config, fake_hub(calls))
    assert pinned.corpus.sources[0].path == f"hf://allenai/c4@{SHA}?x=1"
    assert pinned.corpus.sources[1].path == "a.txt"
    assert pinned.evaluation.tasks[0].path == f"hf://Salesforce/wikitext@{SHA}"
    assert sorted(calls) == [("Salesforce/wikitext", "main"), ("allenai/c4", None)]
    # Pinned once: a full commit sha is kept as is, without asking the hub again.
    assert pin_hub_revisions(pinned, fake_hub(calls)) == pinned and len(calls) == 2


def test_readers_load_the_pinned_commit():
    hub = parse_hf_uri(f"hf://nyu-mll/glue@{SHA}?config=sst2&split=train", "k", None, "validation")
    assert (hub.dataset, hub.config, hub.split, hub.revision) == ("nyu-mll/glue", "sst2", "train", SHA)
    assert split_revision(f"hf://a/b@{SHA}") == ("hf://a/b", SHA)


def test_unreachable_hub_names_the_key_and_the_way_out():
    def offline(dataset_id: str, revision: str | None) -> str:
        raise OSError("Name or service not known")

    with pytest.raises(DataError, match=r"corpus.sources\[0\].path: cannot pin 'hf://a/b'.*hf://a/b@<sha>"):
        pin_hub_uri("hf://a/b", "corpus.sources[0].path", offline)
