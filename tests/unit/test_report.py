"""The run report renders from a full synthetic run record and from partial ones."""

from __future__ import annotations

import json

import pytest

from lmforge.app.report import STAGE_ORDER, report_tables, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FINETUNE_STAGES = [
    f"finetune/sst2/finetune-2000-s{seed}/{init}" for seed in (0, 1) for init in ("pretrained", "random")
]
ORDER = [*STAGE_ORDER[:4], *FINETUNE_STAGES, *STAGE_ORDER[4:]]


def full_record(tmp_path) -> dict:
    def stage(metrics: dict, status: str = "completed", name: str = "x") -> dict:
        return {
            "status": status,
            "artifact_id": f"art-{name}",
            "path": str(tmp_path / name),
            "metrics": metrics,
            "seconds": 1.5,
        }

    def finetune(init: str, seed: int, accuracy: float) -> dict:
        metrics = {"primary_metric": "accuracy", "dev_accuracy": accuracy, "train_size": 2000}
        return stage({**metrics, "loss_curve": [[1, 0.70], [2, 0.65]]}, name=f"ft-{init}-{seed}")

    return {
        "run_id": "demo-20260101",
        "config_name": "demo",
        "status": "completed",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:10:00Z",
        "wall_seconds": 600.0,
        "store": "/tmp/store",
        "stages": {
            "clean": stage(
                {
                    "num_read": 100,
                    "num_kept": 80,
                    "num_dropped": 20,
                    "dropped": {"too_short": 15, "invalid_utf8": 5},
                },
                name="clean",
            ),
            "tokenizer": stage({"vocab_size": 8192, "algorithm": "bpe"}, "reused", "tokenizer"),
            "shard": stage(
                {
                    "train": {"num_sequences": 900, "num_tokens": 230400},
                    "validation": {"num_sequences": 50, "num_tokens": 12800},
                    "seq_len": 256,
                },
                name="shard",
            ),
            "pretrain": stage(
                {
                    "initial_train_loss": 9.1,
                    "final_train_loss": 5.2,
                    "final_val_loss": 5.4,
                    "tokens_per_second": 12345.6,
                    "mfu_vs_measured_peak": 0.0123,
                    "mfu_vs_nominal_peak": 0.0045,
                    "precision": "fp32",
                    "precision_reason": "CPU lacks native bf16 (AVX2)",
                    "loss_curve": [[1, 9.1], [10, 7.0], [20, 5.2]],
                    "val_curve": [[10, 7.3], [20, 5.4]],
                },
                name="pretrain",
            ),
            FINETUNE_STAGES[0]: finetune("pretrained", 0, 0.70),
            FINETUNE_STAGES[1]: finetune("random", 0, 0.60),
            FINETUNE_STAGES[2]: finetune("pretrained", 1, 0.72),
            FINETUNE_STAGES[3]: finetune("random", 1, 0.63),
            "eval/sst2_icl": stage(
                {
                    "shots": {
                        "0": {"mean_accuracy": 0.5, "std_accuracy": 0.0, "accuracies": [0.5] * 3},
                        "5": {"mean_accuracy": 0.55, "std_accuracy": 0.02, "accuracies": [0.53, 0.55, 0.57]},
                    },
                    "majority_baseline_accuracy": 0.509,
                },
                name="icl",
            ),
            "eval/wikitext_perplexity": stage({"perplexity": 321.5, "bits_per_byte": 2.1}, name="ppl"),
            "eval/mlm_accuracy": stage({}, "skipped", "mlm"),
        },
    }


@pytest.mark.unit
def test_full_record_renders_every_section(tmp_path):
    record = full_record(tmp_path)
    paths = write_report(record, tmp_path / "report")
    assert set(paths) == {"markdown", "html", "png", "data_efficiency", "finetune_losses"}
    markdown = paths["markdown"].read_text()
    for expected in (
        "## Summary",
        "## Stages",
        "## Loss curves",
        "## Downstream tasks",
        "80 / 100",
        "dropped: too_short | 15",
        "tokenizer vocab size | 8192",
        "shards: train.num_tokens | 230400",
        "9.1 -> 5.2",
        "pretrain MFU vs measured matmul peak | 1.23%",
        "pretrain MFU vs nominal peak | 0.45%",
        "pretrain precision | fp32 (CPU lacks native bf16 (AVX2))",
        # Means over the two seeds; sample std of (0.70, 0.72) is 0.01414, of (0.60, 0.63) 0.02121.
        "sst2 dev accuracy (finetune, n=2000, 2 seeds) | pretrained 0.71 ± 0.014 vs random 0.615 ± 0.021",
        "k=5 | 0.55 ± 0.02 (3 orderings)",
        "k=0 | 0.5 ± 0 (3 orderings)",
        "WikiText-2 perplexity | 321.5",
        "MLM masked-token accuracy | n/a",
        "art-tokenizer",
        "reused",
    ):
        assert expected in markdown, expected
    for name in ORDER:
        assert f"| {name} |" in markdown
    for name in ("png", "data_efficiency", "finetune_losses"):
        assert paths[name].read_bytes().startswith(PNG_SIGNATURE)
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "0.55 ± 0.02" in page


@pytest.mark.unit
def test_report_tables_are_prefect_ready(tmp_path):
    markdown, rows = report_tables(full_record(tmp_path))
    assert not any(line.startswith((" ", "\t")) for line in markdown.splitlines())
    assert [row["stage"] for row in rows] == ORDER
    assert rows[1]["status"] == "reused" and rows[1]["artifact"] == "art-tokenizer"
    assert json.loads(json.dumps(rows)) == rows


@pytest.mark.unit
@pytest.mark.parametrize(
    "record",
    [
        {},
        {"run_id": "r", "stages": {}},
        {
            "run_id": "r",
            "status": "failed",
            "stages": {
                "clean": {"status": "completed", "metrics": {"num_kept": 3}},
                "pretrain": {"status": "failed"},
                "custom/stage": None,
            },
        },
    ],
)
def test_partial_records_render(tmp_path, record):
    paths = write_report(record, tmp_path)
    markdown = paths["markdown"].read_text()
    assert "## Summary" in markdown and "n/a" in markdown and "## Downstream tasks" not in markdown
    assert "fine-tune dev accuracy | n/a" in markdown
    assert set(paths) == {"markdown", "html", "png"}
    assert paths["png"].read_bytes().startswith(PNG_SIGNATURE)
    if record.get("stages"):
        assert "| pretrain | failed |" in markdown and "| custom/stage |" in markdown


@pytest.mark.unit
def test_curves_read_from_stage_files_when_metrics_lack_them(tmp_path):
    from lmforge.app.report import pretrain_curves

    pre_dir = tmp_path / "pre"
    pre_dir.mkdir()
    events = [
        {"step": 1, "train_loss": 9.0},
        {"step": 2, "loss": 8.0},
        {"step": 2, "val_loss": 8.5},
        {"note": 1},
    ]
    (pre_dir / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    record = {"stages": {"pretrain": {"path": str(pre_dir), "metrics": {}}}}
    assert pretrain_curves(record) == {"train loss": [(1.0, 9.0), (2.0, 8.0)], "val loss": [(2.0, 8.5)]}
    # Fine-tune curves from loss_curve.json: tests/unit/test_task_report.py.


def test_fill_mask_probes_samples_and_pseudo_perplexity_render(tmp_path):
    record = {
        "run_id": "r",
        "stages": {
            "eval/fill_mask_probes": {
                "metrics": {
                    "probes": [
                        {
                            "probe": "Paris is the capital of {mask}.",
                            "sentence": "Paris is the capital of [MASK].",
                            "predictions": [
                                {"token_str": " france", "score": 0.5},
                                {"token_str": "the", "score": 0.25},
                            ],
                        }
                    ]
                }
            },
            "eval/generation_samples": {
                "metrics": {"samples": [{"prompt": "The river", "output": " flows"}]}
            },
            "eval/wikitext_pseudo_perplexity": {"metrics": {"pseudo_perplexity": 41.5}},
        },
    }
    markdown = write_report(record, tmp_path)["markdown"].read_text()
    assert "| Paris is the capital of [MASK]. | france (0.500), the (0.250) |" in markdown
    assert "| The river |  flows |" in markdown
    assert "| WikiText-2 pseudo-perplexity (masked LM) | 41.5 |" in markdown


@pytest.mark.unit
def test_curation_section_lists_steps_samples_and_decontamination(tmp_path):
    record = full_record(tmp_path)
    sample = {
        "doc_id": "0/wiki_00.txt/7",
        "reason": "language",
        "value": 0.2,
        "text": "Marcus  Claudius\nTacitus",
    }
    record["stages"]["clean"]["metrics"].update(
        {
            "steps": {
                "language_id": {"dropped": 15, "reasons": {"language": 15}, "samples": [sample]},
                "gopher_quality": {"dropped": 5, "reasons": {"gopher_short_doc": 5}, "samples": []},
            },
            "decontamination": {
                "sst2_dev": {
                    "num_contaminated_documents": 2,
                    "num_contaminated_examples": 3,
                    "num_examples": 776,
                    "sample_example_ids": ["12", "40", "41"],
                }
            },
            "pii_replaced": {"email": 4, "phone": 1},
            "near_dedup": {"cluster_size_histogram": {"1": 70, "2": 3}},
        }
    )
    markdown = write_report(record, tmp_path / "report")["markdown"].read_text()
    assert "## Corpus curation" in markdown
    # Steps by documents dropped; snippets on one line.
    assert "| language_id | 15 | language 15 | 0/wiki_00.txt/7: Marcus Claudius Tacitus |" in markdown
    assert markdown.index("| language_id |") < markdown.index("| gopher_quality |")
    assert "| sst2_dev | 2 | 3 / 776 | 12, 40, 41 |" in markdown
    assert "PII replaced: email 4, phone 1" in markdown
    assert "near-duplicate clusters by size: 1: 70, 2: 3" in markdown
    # With per-step counts the summary no longer lists every reason.
    assert "dropped: too_short" not in markdown
