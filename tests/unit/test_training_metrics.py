"""Event logs (canonical order, resume cut) and the run summary's speed and MFU numbers."""

from __future__ import annotations

import math

import pytest

from lmforge.training.metrics import EventLog, run_summary, speed_summary

pytestmark = pytest.mark.unit


def filled(order: list[tuple[str, int]]) -> EventLog:
    log = EventLog()
    for event, step in order:
        log.add(event, step, value=step)
    return log


def test_file_bytes_do_not_depend_on_flush_timing(tmp_path):
    # Train losses flushed at every step vs. only at step 4 (after the step-2 eval was recorded).
    every_step = [("start", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4)]
    batched = [("start", 0), ("eval", 2), ("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    filled(every_step).write(tmp_path / "a.jsonl")
    filled(batched).write(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_load_keeps_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    filled([("start", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3)]).write(path)
    restored = EventLog.load(path, up_to_step=2)
    assert [(e["event"], e["step"]) for e in restored.events] == [
        ("start", 0),
        ("train", 1),
        ("train", 2),
        ("eval", 2),
    ]
    assert EventLog.load(tmp_path / "absent.jsonl", 5).events == []


def summary_logs() -> tuple[EventLog, EventLog]:
    metrics, telemetry = EventLog(), EventLog()
    metrics.add("start", 0, num_parameters=1000, flops_per_token=600)
    for step, loss in [(1, 6.0), (2, 5.0), (3, 4.5), (4, 4.0)]:
        metrics.add("train", step, loss=loss, lr=1e-3, epoch=0, num_tokens=100 * step)
    metrics.add("eval", 4, val_loss=4.2, num_eval_tokens=50)
    telemetry.add("start", 0, peak_flops_per_second=1e6, peak_flops_per_worker=[5e5, 5e5], peak_suspect=False)
    telemetry.add("speed", 4, tokens_per_second=90.0, train_seconds=2.0)
    return metrics, telemetry


def test_summary_curves_speed_and_mfu():
    metrics, telemetry = summary_logs()
    summary = run_summary(metrics, telemetry, clm=True, curve_step=lambda step: step % 2 == 0)
    assert (summary["initial_train_loss"], summary["final_train_loss"]) == (6.0, 4.0)
    assert summary["loss_curve"] == [[2, 5.0], [4, 4.0]] and summary["val_curve"] == [[4, 4.2]]
    assert summary["val_perplexity"] == math.exp(4.2)
    # 400 tokens in 2 training seconds; 600 FLOPs per token against a 1e6 FLOP/s peak.
    assert summary["tokens_per_second"] == 200.0
    assert summary["steady_tokens_per_second"] is None  # no step-1 record: all training time
    assert summary["mfu_vs_measured_peak"] == pytest.approx(600 * 200 / 1e6, rel=1e-15)
    assert summary["mfu"] == summary["mfu_vs_measured_peak"]
    assert summary["mfu_vs_nominal_peak"] is None and summary["peak_suspect"] is False


def test_summary_mfu_leaves_out_step_one():
    metrics, telemetry = summary_logs()
    # Step 1 (compilation) took 1.5 s of the 2 training seconds; steps 2-4 moved 300 tokens in 0.5 s.
    telemetry.add("speed", 1, tokens_per_second=66.7, train_seconds=1.5, num_tokens=100)
    telemetry.events[1]["num_tokens"] = 400
    summary = run_summary(metrics, telemetry, clm=False, curve_step=lambda step: True)
    assert summary["tokens_per_second"] == 200.0  # all training time
    assert summary["steady_tokens_per_second"] == pytest.approx(600.0)
    assert summary["mfu_vs_measured_peak"] == pytest.approx(600 * 600 / 1e6, rel=1e-12)


def test_every_speed_key_of_the_summary_is_left_out_of_reproduction_checks():
    from lmforge.app.reproduce import is_telemetry_metric

    metrics, telemetry = summary_logs()
    speed = speed_summary(telemetry, num_tokens=400, flops_per_token=600)
    # A reproduction compares every other summary value bit for bit; timings differ between runs.
    assert [key for key in speed if not is_telemetry_metric(key)] == []


def test_summary_nominal_mfu_where_a_datasheet_peak_is_known():
    metrics, telemetry = summary_logs()
    telemetry.events[0]["nominal_peak_flops_per_second"] = 4e6
    summary = run_summary(metrics, telemetry, clm=False, curve_step=lambda step: True)
    assert summary["mfu_vs_nominal_peak"] == pytest.approx(600 * 200 / 4e6, rel=1e-15)
    assert "val_perplexity" not in summary and len(summary["loss_curve"]) == 4


def test_summary_without_speed_records_has_no_mfu():
    metrics, _ = summary_logs()
    summary = run_summary(metrics, EventLog(), clm=False, curve_step=lambda step: True)
    assert summary["tokens_per_second"] is None and summary["mfu"] is None


def test_summary_placement_and_restarts_come_from_telemetry(tmp_path):
    metrics, telemetry = summary_logs()
    telemetry.add("placement", 0, worker_nodes=["node-a", "node-b"])
    telemetry.add("resume", 2, time=1.0)
    telemetry.add("placement", 2, worker_nodes=["node-c", "node-b"])
    # What a second resume finds in the checkpoint: records up to its step, then its own.
    telemetry.write(tmp_path / "speed.jsonl")
    resumed = EventLog.load(tmp_path / "speed.jsonl", 3)
    resumed.add("resume", 3, time=2.0)
    resumed.add("placement", 3, worker_nodes=["node-d", "node-e"])
    summary = run_summary(metrics, resumed, clm=False, curve_step=lambda step: True)
    assert summary["restarts"] == [{"from_step": 2}, {"from_step": 3}]
    assert summary["worker_nodes"] == ["node-d", "node-e"]  # the attempt that finished
    fresh = run_summary(metrics, EventLog(), clm=False, curve_step=lambda step: True)
    assert fresh["restarts"] == [] and fresh["worker_nodes"] is None


def test_an_mfu_above_one_marks_the_peak_suspect():
    metrics, telemetry = summary_logs()
    telemetry.events[0]["peak_flops_per_second"] = 1e5  # 600 FLOPs x 200 tokens/s = 1.2e5 achieved
    summary = run_summary(metrics, telemetry, clm=False, curve_step=lambda step: True)
    assert summary["mfu_vs_measured_peak"] == pytest.approx(1.2)
    assert summary["peak_suspect"] is True
