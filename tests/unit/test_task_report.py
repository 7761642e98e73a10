"""The downstream-task grid: stage names parsed, seeds aggregated, plots drawn, the report's new section."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.app.report import stages_in_order, write_report
from lmforge.app.task_report import (
    Cell,
    grid_rows,
    grid_stage_names,
    headline,
    loss_curve,
    mean_std,
    parse_stage_name,
    plot_data_efficiency,
    plot_finetune_losses,
    target_cell,
    task_note,
)

pytestmark = pytest.mark.unit
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TARGET = {"metric": "accuracy", "value": 0.72}
# (strategy, size, init) -> per seed (dev_accuracy, epochs_to_target, target_reached_seconds, invalid_fraction)
SEEDS = {
    ("finetune", "100", "pretrained"): [(0.70, None, None, 0.1), (0.72, 3, 30.0, 0.1), (0.74, 2, 20.0, 0.1)],
    ("finetune", "100", "random"): [(0.60, None, None, 0.4), (0.61, None, None, 0.4), (0.62, None, None, 0.4)],
    ("finetune", "all", "pretrained"): [(0.80, 2, 20.0, 0.0), (0.84, 1, 10.0, 0.03), (0.88, 1, 12.0, 0.03)],
    ("finetune", "all", "random"): [(0.50, None, None, 0.1), (0.50, None, None, 0.2), (0.56, None, None, 0.3)],
    ("linear_probe", "all", "pretrained"): [(0.65, None, None, None), (0.66, None, None, None), (0.67, None, None, None)],
    ("linear_probe", "all", "random"): [(0.55, None, None, None)],  # seeds 1 and 2 failed: no metrics
}  # fmt: skip


def grid_record(tmp_path) -> dict:
    stages: dict = {"pretrain": {"status": "completed", "metrics": {"final_train_loss": 5.0}}}
    for (strategy, size, init), seeds in SEEDS.items():
        for seed_index, (accuracy, epochs, seconds, invalid) in enumerate(seeds):
            metrics = {
                "task": "sst2",
                "task_type": "classification",
                "strategy": strategy,
                "init": init,
                "requested_train_size": size if size == "all" else int(size),
                "train_size": 1000 if size == "all" else int(size),
                "seed_index": seed_index,
                "seed": 1234 + seed_index,
                "primary_metric": "accuracy",
                "dev_accuracy": accuracy,
                "dev_macro_f1": round(accuracy - 0.1, 4),
                "dev_loss": 0.5,
                "dev_majority_baseline_accuracy": 0.509,
                "dev_size": 872,
                "target": TARGET,
                "epochs_to_target": epochs,
                "target_reached_seconds": seconds,
                "loss_curve": [[1, 0.7 + seed_index / 100], [2, 0.6], [3, 0.5]],
            }
            if invalid is not None:
                metrics["dev_invalid_fraction"] = invalid
            name = f"finetune/sst2/{strategy}-{size}-s{seed_index}/{init}"
            stages[name] = {"status": "completed", "path": str(tmp_path / name), "metrics": metrics}
        for seed_index in range(len(seeds), 3):
            stages[f"finetune/sst2/{strategy}-{size}-s{seed_index}/{init}"] = {"status": "failed"}
    stages["finetune/sst2/pretrained"] = {"status": "completed", "metrics": {"dev_accuracy": 0.99}}
    stages["eval/sst2_icl"] = {"status": "completed", "metrics": {}}
    return {"run_id": "grid-1", "status": "completed", "stages": stages}


def test_stage_names_parse_and_others_are_ignored():
    assert parse_stage_name("finetune/sst2/finetune-2000-s0/pretrained") == Cell(
        "sst2", "finetune", "2000", 0, "pretrained"
    )
    assert parse_stage_name("finetune/my-task.v2/linear_probe-all-s12/random") == Cell(
        "my-task.v2", "linear_probe", "all", 12, "random"
    )
    for name in (
        "finetune/sst2/pretrained",
        "finetune/sst2/finetune-100-s0",
        "finetune/sst2/finetune-x-s0/random",
        "finetune/sst2/finetune-100-s0/random/extra",
        "eval/sst2/finetune-100-s0/random",
        "pretrain",
    ):
        assert parse_stage_name(name) is None, name
    names = [
        "finetune/b/finetune-all-s0/pretrained",
        "finetune/a/linear_probe-10-s0/pretrained",
        "finetune/a/finetune-2000-s10/pretrained",
        "finetune/a/finetune-2000-s2/random",
        "finetune/a/finetune-2000-s2/pretrained",
        "finetune/a/finetune-300-s0/random",
        "eval/sst2_icl",
    ]
    assert grid_stage_names(names) == [
        "finetune/a/finetune-300-s0/random",
        "finetune/a/finetune-2000-s2/pretrained",
        "finetune/a/finetune-2000-s2/random",
        "finetune/a/finetune-2000-s10/pretrained",
        "finetune/a/linear_probe-10-s0/pretrained",
        "finetune/b/finetune-all-s0/pretrained",
    ]


def test_mean_std_is_the_sample_std_and_na_for_one_seed():
    assert mean_std([0.50, 0.50, 0.56]) == f"0.52 ± {math.sqrt(0.0012):.2g}" == "0.52 ± 0.035"
    assert mean_std([0.55]) == "0.55 ± n/a"
    assert mean_std([]) == "n/a"


def test_grid_rows_aggregate_seeds_per_strategy_and_size(tmp_path):
    tables = grid_rows(grid_record(tmp_path))
    assert list(tables) == ["sst2"]  # the old-style name is not part of the grid
    headers, rows = tables["sst2"]
    assert headers == [
        "strategy", "requested size", "train size (mean)", "seeds",
        "dev accuracy, pretrained", "dev accuracy, random", "pretrained − random",
        "dev macro_f1, pretrained", "dev macro_f1, random",
        "dev invalid_fraction, pretrained", "dev invalid_fraction, random",
        "epochs to target, pretrained", "epochs to target, random",
        "seconds to target, pretrained", "seconds to target, random",
    ]  # fmt: skip
    table = {(row[0], row[1]): dict(zip(headers, row, strict=True)) for row in rows}
    assert list(table) == [("finetune", "100"), ("finetune", "all"), ("linear_probe", "all")]
    small, full, probe = table.values()
    assert small["train size (mean)"] == "100" and full["train size (mean)"] == "1000"
    assert small["seeds"] == "3" and probe["seeds"] == "pretrained 3, random 1"
    assert small["dev accuracy, pretrained"] == "0.72 ± 0.02"
    assert small["dev accuracy, random"] == "0.61 ± 0.01"
    assert small["pretrained − random"] == "+0.11"
    assert full["dev accuracy, pretrained"] == "0.84 ± 0.04"
    assert full["dev accuracy, random"] == "0.52 ± 0.035"
    assert full["pretrained − random"] == "+0.32"
    assert full["dev macro_f1, pretrained"] == "0.74 ± 0.04"
    assert probe["dev accuracy, random"] == "0.55 ± n/a"
    assert probe["pretrained − random"] == "+0.11"
    # Targets: some seeds, all seeds, none.
    assert small["epochs to target, pretrained"] == "2.5 (2 of 3 reached)"
    assert small["seconds to target, pretrained"] == "25 (2 of 3 reached)"
    assert full["epochs to target, pretrained"] == f"{4 / 3:.3g}" == "1.33"
    assert full["seconds to target, pretrained"] == "14"
    assert full["epochs to target, random"] == "not reached"
    assert "dev loss, pretrained" not in headers


def test_target_cells_distinguish_no_target_from_not_reached():
    reached = {"target": TARGET, "epochs_to_target": 2}  # a reused stage: epoch_seconds absent
    assert target_cell([reached, reached], "epochs_to_target") == "2"
    assert target_cell([reached, reached], "target_reached_seconds") == "n/a"
    assert target_cell([reached, {"target": TARGET}], "target_reached_seconds") == "n/a (1 of 2 reached)"
    assert target_cell([{"target": None, "epochs_to_target": None}], "epochs_to_target") == "n/a"
    assert target_cell([], "epochs_to_target") == "n/a"


def test_missing_metrics_render_na(tmp_path):
    record = {
        "stages": {
            "finetune/t/finetune-10-s0/pretrained": {"status": "failed"},
            "finetune/t/finetune-10-s1/pretrained": {"metrics": {"train_size": 10}},
        }
    }
    headers, rows = grid_rows(record)["t"]
    assert headers == ["strategy", "requested size", "train size (mean)", "seeds", "dev n/a, pretrained"] + [
        "epochs to target, pretrained",
        "seconds to target, pretrained",
    ]
    assert rows == [["finetune", "10", "10", "0", "n/a", "n/a", "n/a"]]
    assert "target n/a; majority-class baseline n/a" in task_note(record, "t")
    assert headline(record, "t")["inits"]["pretrained"] == {
        "mean": None, "std": None, "num_seeds": 0, "invalid_fraction": None
    }  # fmt: skip
    assert headline(record, "absent") == {}
    markdown = write_report(record, tmp_path)["markdown"].read_text()
    assert "| t dev n/a (finetune, n=10, 0 seeds) | pretrained n/a |" in markdown


def test_headline_takes_the_largest_finetune_size(tmp_path):
    best = headline(grid_record(tmp_path))["sst2"]
    assert (best["strategy"], best["size"], best["train_size"], best["primary_metric"]) == (
        "finetune", "all", 1000, "accuracy"
    )  # fmt: skip
    pretrained, random = best["inits"]["pretrained"], best["inits"]["random"]
    assert pretrained["mean"] == pytest.approx(0.84) and pretrained["std"] == pytest.approx(0.04)
    assert random["mean"] == pytest.approx(0.52) and random["std"] == pytest.approx(math.sqrt(0.0012))
    assert pretrained["num_seeds"] == random["num_seeds"] == 3
    assert pretrained["invalid_fraction"] == pytest.approx(0.02)
    assert random["invalid_fraction"] == pytest.approx(0.2)
    probe_only = {"stages": {"finetune/x/linear_probe-5-s0/random": {"metrics": {"dev_f1": 0.3}}}}
    assert headline(probe_only, "x")["strategy"] == "linear_probe"


def test_loss_curve_falls_back_to_the_stage_file(tmp_path):
    (tmp_path / "loss_curve.json").write_text("[[1, 0.7], [2, 0.6], [3, null]]")
    assert loss_curve({"path": str(tmp_path), "metrics": {}}) == [(1.0, 0.7), (2.0, 0.6)]
    assert loss_curve({"path": str(tmp_path), "metrics": {"loss_curve": [[5, 0.1]]}}) == [(5.0, 0.1)]
    assert loss_curve({"path": "s3://bucket/stage", "metrics": {}}) == []
    assert loss_curve({}) == []


def test_plots_write_pngs_only_when_there_is_a_grid(tmp_path):
    record = grid_record(tmp_path)
    assert plot_data_efficiency(record, tmp_path / "efficiency.png")
    assert plot_finetune_losses(record, tmp_path / "losses.png")
    for name in ("efficiency.png", "losses.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    empty = {"stages": {"finetune/sst2/pretrained": {"metrics": {"dev_accuracy": 0.5}}}}
    assert not plot_data_efficiency(empty, tmp_path / "none.png")
    assert not plot_finetune_losses(empty, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_report_has_the_downstream_section_and_grid_stage_order(tmp_path):
    record = grid_record(tmp_path)
    paths = write_report(record, tmp_path / "report")
    assert set(paths) == {"markdown", "html", "png", "data_efficiency", "finetune_losses"}
    markdown = paths["markdown"].read_text()
    assert (
        "| sst2 dev accuracy (finetune, n=all (1000), 3 seeds) | pretrained 0.84 ± 0.04 vs random 0.52 ± 0.035 |"
        in markdown
    )
    section = markdown.split("## Downstream tasks", 1)[1].split("\n## ", 1)[0]
    assert "### sst2" in section
    assert "sst2 (classification): primary metric dev accuracy; target dev accuracy 0.72" in section
    assert "| finetune | all | 1000 | 3 | 0.84 ± 0.04 | 0.52 ± 0.035 | +0.32 |" in section
    assert "![data efficiency](data_efficiency.png)" in section
    assert "![finetune losses](finetune_losses.png)" in section
    assert paths["html"].read_text().count("data:image/png;base64,") == 3
    names = [name for name, _ in stages_in_order(record)]
    assert names[0] == "pretrain" and names[1] == "finetune/sst2/finetune-100-s0/pretrained"
    assert names[2] == "finetune/sst2/finetune-100-s0/random"
    assert names.index("eval/sst2_icl") == 1 + 3 * 2 * 3 and names[-1] == "finetune/sst2/pretrained"


def test_stage_file_curves_reach_the_loss_plot(tmp_path):
    stage_dir = tmp_path / "ft"
    stage_dir.mkdir()
    (stage_dir / "loss_curve.json").write_text(json.dumps([[1, 0.7], [2, 0.6]]))
    record = {"stages": {"finetune/t/finetune-all-s0/random": {"path": str(stage_dir), "metrics": {}}}}
    assert plot_finetune_losses(record, tmp_path / "losses.png")
    assert not plot_data_efficiency(record, tmp_path / "efficiency.png")  # no scores, no sizes
