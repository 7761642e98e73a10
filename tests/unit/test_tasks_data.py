"""Task data loading: GLUE TSV, raw text, hub datasets (through a local folder), validation shards."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.tasks.data import load_sst2, load_text, parse_hf_uri, read_validation_sequences, seeded_subset
from tests.unit.test_tasks_support import write_sst2, write_wikitext

pytestmark = pytest.mark.unit

HUB_README = """---
configs:
- config_name: {config}
  data_files:
{files}
---
"""


def fake_hub_dataset(root, config: str, splits: dict[str, dict]) -> str:
    """A dataset folder laid out like the hub repo (README configs + parquet per split)."""
    (root / config).mkdir(parents=True)
    files = ""
    for split, columns in splits.items():
        pq.write_table(pa.table(columns), root / config / f"{split}-00000-of-00001.parquet")
        files += f"  - split: {split}\n    path: {config}/{split}-*.parquet\n"
    (root / "README.md").write_text(HUB_README.format(config=config, files=files))
    return f"hf://{root}"


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_sst2_tsv_matches_hub_layout(tmp_path):
    write_sst2(tmp_path / "data")
    local = load_sst2("sst2/dev.tsv", tmp_path / "data", "k", "validation")
    assert local[0].text == "a charming and often affecting journey" and local[0].label == 1
    uri = fake_hub_dataset(
        tmp_path / "glue",
        "sst2",
        {
            "train": {"sentence": ["good ", "bad "], "label": [1, 0], "idx": [0, 1]},
            "validation": {
                "sentence": [r.text + " " for r in local],
                "label": [r.label for r in local],
                "idx": list(range(len(local))),
            },
        },
    )
    assert load_sst2(uri, None, "k", "validation") == local
    assert [r.label for r in load_sst2(uri, None, "k", "train")] == [1, 0]
    assert [r.label for r in load_sst2(uri + "?split=train", None, "k", "validation")] == [1, 0]


def test_text_from_file_and_hub_is_identical(tmp_path):
    expected = write_wikitext(tmp_path / "data")
    assert load_text("wikitext2_raw/valid.txt", tmp_path / "data", "k") == expected
    lines = expected.splitlines(keepends=True)
    uri = fake_hub_dataset(tmp_path / "wikitext", "wikitext-2-raw-v1", {"validation": {"text": lines}})
    assert load_text(uri, None, "k") == expected


def test_bad_inputs_name_file_or_key(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t1\nno label here\n")
    with pytest.raises(DataError, match=r"bad.tsv:3"):
        load_sst2(str(bad), None, "k", "train")
    with pytest.raises(ConfigError, match=r"my\.key: no file matches"):
        load_text("missing.txt", tmp_path, "my.key")
    with pytest.raises(ConfigError, match="my.key"):
        parse_hf_uri("hf://", "my.key", None, "train")
    assert parse_hf_uri("hf://a/b?config=c", "k", "d", "train").config == "c"


def test_seeded_subset_is_deterministic():
    rows = list(range(100))
    assert seeded_subset(rows, 10, 1) == seeded_subset(rows, 10, 1) != seeded_subset(rows, 10, 2)
    assert sorted(seeded_subset(rows, None, 1)) == rows


def test_validation_sequences_follow_manifest_and_limit(tmp_path):
    import json

    shards = []
    for index, start in enumerate((0, 30)):
        rows = [[start + 3 * r + c for c in range(3)] for r in range(5 if index == 0 else 2)]
        name = f"validation-{index:05d}.parquet"
        pq.write_table(pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int32()))}), tmp_path / name)
        shards.append({"path": name, "split": "validation", "num_sequences": len(rows)})
    pq.write_table(
        pa.table({"input_ids": pa.array([[999] * 3], type=pa.list_(pa.int32()))}),
        tmp_path / "train-00000.parquet",
    )
    shards.append({"path": "train-00000.parquet", "split": "train", "num_sequences": 1})
    manifest = {"packing": "mlm", "seq_len": 3, "shards": shards}
    (tmp_path / "dataset_manifest.json").write_text(json.dumps(manifest))
    ids = read_validation_sequences(tmp_path, None)
    assert ids.shape == (7, 3) and ids[0].tolist() == [0, 1, 2] and ids[5].tolist() == [30, 31, 32]
    assert read_validation_sequences(tmp_path, 6).shape == (6, 3)
    manifest["shards"] = [shards[1], shards[2]]
    (tmp_path / "dataset_manifest.json").write_text(json.dumps(manifest))
    assert read_validation_sequences(tmp_path, None).tolist() == [[30, 31, 32], [33, 34, 35]]
    manifest["shards"] = [shards[2]]
    (tmp_path / "dataset_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no sequences"):
        read_validation_sequences(tmp_path, None)
    with pytest.raises(ArtifactError, match="dataset_manifest.json"):
        read_validation_sequences(tmp_path / "empty", None)


def test_real_data_files(shared_data_dir):
    from lmforge.tasks import EvaluationConfig, FinetuneConfig, check_inputs

    check_inputs(FinetuneConfig(), EvaluationConfig(), shared_data_dir)
    assert len(load_sst2("sst2/train.tsv", shared_data_dir, "k", "train")) == 67349
    dev = load_sst2("sst2/dev.tsv", shared_data_dir, "k", "validation")
    assert len(dev) == 872 and {row.label for row in dev} == {0, 1}
    text = load_text("wikitext2_raw/valid.txt", shared_data_dir, "k")
    assert "\r" not in text and text.count("\n") == 3760
