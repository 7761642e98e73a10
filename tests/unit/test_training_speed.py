"""The speed monitor: a suspect peak is measured again and flagged; speed records carry MFU."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lmforge.training import speed
from lmforge.training.speed import SpeedMonitor

pytestmark = pytest.mark.unit


class FakeLoop(SimpleNamespace):
    """The parts of PretrainLoop the speed monitor reads; records land in a list."""

    def record(self, event, telemetry=False, **values):
        self.records.append({"event": event, "telemetry": telemetry, **values})

    def is_log_step(self):
        return True


def fake_loop(precision: str) -> FakeLoop:
    inputs = SimpleNamespace(precision=precision, precision_reason="test")
    env = SimpleNamespace(rank=0, device=torch.device("cpu"))
    return FakeLoop(inputs=inputs, env=env, step=0, records=[], worker_start_time=0.0,
                    tokens_per_step=1000, flops_per_token=600)  # fmt: skip


def test_emulated_bf16_peak_is_measured_twice_then_flagged(monkeypatch, caplog):
    readings = iter([0.7e9, 0.6e9])  # what an AVX2-only EPYC measured for bf16
    calls = []

    def fake_measure(dtype, seconds, device, repeats):
        calls.append(dtype)
        return next(readings)

    monkeypatch.setattr(speed, "measure_matmul_peak", fake_measure)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    loop = fake_loop("bf16")
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        SpeedMonitor().on_start(loop)
    assert calls == [torch.bfloat16, torch.bfloat16]
    start = loop.records[0]
    assert start["telemetry"] and start["peak_suspect"] is True
    assert start["peak_flops_per_second"] == 0.7e9 and start["nominal_peak_flops_per_second"] is None
    assert any("below the plausible" in record.getMessage() for record in caplog.records)


def test_speed_record_divides_achieved_flops_by_the_measured_peak(monkeypatch):
    monkeypatch.setattr(speed, "measure_matmul_peak", lambda *args, **kwargs: 90e9)
    loop = fake_loop("fp32")
    monitor = SpeedMonitor()
    monitor.on_start(loop)
    assert loop.records[0]["peak_suspect"] is False
    for _ in range(2):
        monitor.on_step_start(loop)
        loop.step += 1
        monitor.on_step_end(loop)
    record = loop.records[-1]
    assert record["event"] == "speed" and record["num_tokens"] == 2000
    # Last interval: one step of 1000 tokens.
    assert record["mfu_vs_measured_peak"] == pytest.approx(600 * record["tokens_per_second"] / 90e9)
    assert record["train_seconds"] == pytest.approx(monitor.clock.read())
