"""Progress reports: rates and ETA, throttling, notes, and the pre-training callback that sends them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmforge.infra import progress
from lmforge.infra.progress import ProgressReporter, ProgressTarget, ProgressUpdate
from lmforge.training.callbacks import ProgressReport

pytestmark = pytest.mark.unit


class Recorder(progress.ProgressListener):
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []
        self.notes: list[tuple[str, str]] = []

    def progress(self, update: ProgressUpdate) -> None:
        self.updates.append(update)

    def note(self, stage: str, text: str) -> None:
        self.notes.append((stage, text))


@pytest.fixture
def recorder():
    listener = Recorder()
    progress.add_listener(listener)
    yield listener
    progress.remove_listener(listener)


def test_eta_uses_this_attempts_rate_only():
    # Resumed at step 100; 50 steps in 10 s since: 250 left at 5 steps/s is 50 s.
    update = ProgressUpdate("pretrain", done=150, total=400, start_done=100, elapsed=10.0)
    assert update.eta_seconds() == pytest.approx(50.0)
    assert update.percent == pytest.approx(37.5)
    assert ProgressUpdate("pretrain", done=100, total=400, start_done=100, elapsed=3.0).eta_seconds() is None


def test_describe_names_what_is_known():
    update = ProgressUpdate(
        "pretrain", 120, 400, metrics={"loss": 3.21049, "tokens_per_s": 12345.0}, elapsed=12.0
    )
    assert update.describe() == "step 120/400 · loss 3.210 · 12.3k tok/s · ETA 28s"
    assert (
        ProgressUpdate("finetune/sst2/random", 8, 8, metrics={"epoch": 1}).describe() == "step 8/8 · epoch 1"
    )


def test_reporter_throttles_but_always_sends_the_last_step(recorder, monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 0.3, 0.9, 1.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    reporter = ProgressReporter(ProgressTarget("pretrain"), total=5, min_interval=0.5)
    for step in range(1, 6):
        reporter.update(step, loss=1.0 / step)
    assert [update.done for update in recorder.updates] == [1, 4, 5]
    assert recorder.updates[-1].metrics == {"loss": 0.2}


def test_a_note_is_relayed_once(recorder):
    reporter = ProgressReporter(ProgressTarget("pretrain"), total=10, start_done=4, min_interval=0.0)
    reporter.note("resumed pre-training from step 4")
    reporter.update(5)
    reporter.update(6)
    assert recorder.notes == [("pretrain", "resumed pre-training from step 4")]
    assert all(update.note is None for update in recorder.updates)


def test_no_target_reports_nothing(recorder):
    ProgressReporter(None, total=3).update(3)
    assert recorder.updates == []


def test_pretrain_callback_reports_steps_loss_and_speed_from_rank_zero(recorder):
    config = SimpleNamespace(max_steps=40)
    inputs = SimpleNamespace(progress=ProgressTarget("pretrain"))
    loop = SimpleNamespace(is_writer=True, inputs=inputs, config=config, step=20)
    callback = ProgressReport()
    callback.on_start(loop)  # resumed at step 20
    callback.on_record(loop, {"event": "train", "step": 21, "loss": 2.5})
    callback.on_record(loop, {"event": "speed", "step": 21, "tokens_per_second": 900.0})
    loop.step = 40
    callback.on_step_end(loop)
    assert recorder.notes == [("pretrain", "resumed pre-training from step 20 (last checkpoint)")]
    last = recorder.updates[-1]
    assert (last.done, last.total, last.start_done) == (40, 40, 20)
    assert last.metrics == {"loss": 2.5, "tokens_per_s": 900.0}
    other_rank = SimpleNamespace(is_writer=False, inputs=inputs, config=config, step=0)
    silent = ProgressReport()
    silent.on_start(other_rank)
    assert silent.reporter is None
