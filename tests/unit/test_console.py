"""RunConsole: fd-level capture into the run's log, verbose tee, log routing, and the progress views."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console

from lmforge.app.console import RunConsole, RunFormatter
from lmforge.app.progress_view import LiveView, PlainView
from lmforge.infra.progress import ProgressUpdate, notify

pytestmark = pytest.mark.unit

CHILD = "import sys; print('child stdout line'); print('child stderr line', file=sys.stderr)"


def fd_identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def test_captures_fd_writes_and_child_processes_then_restores(tmp_path, capfd):
    log_path = tmp_path / "runs" / "r1" / "console.log"
    before = fd_identity(1), fd_identity(2)
    with RunConsole(log_path, live=False) as console:
        os.write(2, b"fd 2 noise\n")
        os.write(1, b"fd 1 noise\n")
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        console.print("run id: r1")
    os.write(2, b"after the run\n")

    assert (fd_identity(1), fd_identity(2)) == before
    log = log_path.read_text()
    for line in ("fd 2 noise", "fd 1 noise", "child stdout line", "child stderr line", "run id: r1"):
        assert line in log
    assert "after the run" not in log
    out, err = capfd.readouterr()
    assert "run id: r1" in out
    assert "noise" not in out + err and "child" not in out + err
    assert "after the run" in err


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_restores_fds_when_the_block_raises(tmp_path, capfd, error):
    log_path = tmp_path / "console.log"
    before = fd_identity(1), fd_identity(2)
    with pytest.raises(error), RunConsole(log_path, live=False):
        os.write(2, b"before the error\n")
        raise error()
    assert (fd_identity(1), fd_identity(2)) == before
    os.write(2, b"after the error\n")
    out, err = capfd.readouterr()
    assert f"full log: {log_path}" in out
    assert "after the error" in err and "before the error" not in out + err
    assert "before the error" in log_path.read_text()


def test_verbose_tees_to_terminal_and_file(tmp_path, capfd):
    log_path = tmp_path / "console.log"
    with RunConsole(log_path, verbose=True, live=False):
        os.write(2, b"teed fd 2 line\n")
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        logging.getLogger("lmforge.test_console").error("an lmforge error")
    out, _ = capfd.readouterr()
    log = log_path.read_text()
    for line in ("teed fd 2 line", "child stdout line", "child stderr line", "an lmforge error"):
        assert line in out and line in log
    assert log.count("an lmforge error") == 1


@pytest.fixture
def info_loggers():
    """A third-party library's logger and an lmforge logger at INFO, put back as they were afterwards.

    (Not under `ray`: once Ray has started in the same test session its logger stops propagating
    and writes to stderr itself, which the fd capture covers.)"""
    loggers = [logging.getLogger("somelib.test_console"), logging.getLogger("lmforge.test_console")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    yield loggers
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_log_routing_terminal_shows_only_lmforge_warnings(tmp_path, capfd, info_loggers):
    ray_log, lmforge_log = info_loggers
    root_handlers = list(logging.getLogger().handlers)
    with RunConsole(tmp_path / "console.log", live=False):
        ray_log.info("ray info record")
        ray_log.warning("ray warning record")
        lmforge_log.info("lmforge info record")
        lmforge_log.warning("lmforge warning record")
    out, err = capfd.readouterr()
    assert "lmforge warning record" in out
    for hidden in ("ray info record", "ray warning record", "lmforge info record"):
        assert hidden not in out + err
    log = (tmp_path / "console.log").read_text()
    assert "INFO    somelib.test_console: ray info record" in log
    assert "WARNING lmforge.test_console: lmforge warning record" in log
    assert log.count("lmforge warning record") == 1
    assert logging.getLogger().handlers == root_handlers


def test_console_handler_of_a_library_is_set_aside(tmp_path, capfd):
    """Like Prefect's and Ray's: a stderr handler on a logger that does not propagate."""
    library = logging.getLogger("test_console_library")
    handler = logging.StreamHandler(sys.stderr)
    library.addHandler(handler)
    library.propagate = False
    library.setLevel(logging.INFO)
    try:
        with RunConsole(tmp_path / "console.log", live=False):
            library.info("library record")
        library.info("library record after")
    finally:
        library.removeHandler(handler)
    out, err = capfd.readouterr()
    assert "library record\n" not in out + err and "library record after" in err
    assert (
        library.handlers == []
        and "test_console_library: library record" in (tmp_path / "console.log").read_text()
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_view_throttles_progress_lines():
    stream, clock = io.StringIO(), FakeClock()
    view = PlainView(stream, clock=clock)
    view.stage_started("pretrain")
    for step in range(1, 1001):  # 100 s at 10 steps/s
        clock.now += 0.1
        metrics = {"loss": 8.0 - step / 1000, "tokens_per_s": 12345.0}
        view.progress(ProgressUpdate("pretrain", step, 1000, metrics=metrics, elapsed=clock.now))
    view.stage_finished("pretrain", "completed", "model-1a2b")
    lines = stream.getvalue().splitlines()
    progress_lines = [line for line in lines if line.startswith("  pretrain")]
    assert 5 <= len(progress_lines) <= 11, lines
    assert (
        " ".join(progress_lines[0].split()) == "pretrain step 1/1000 · loss 7.999 · 12.3k tok/s · ETA 1m40s"
    )
    assert lines[-1].startswith("✓ pretrain") and "model-1a2b" in lines[-1] and "(100.0 s)" in lines[-1]
    assert "step 1000/1000" in lines[-1] and "loss 7.000" in lines[-1]


def test_plain_view_prints_a_slow_stage_every_max_gap():
    stream, clock = io.StringIO(), FakeClock()
    view = PlainView(stream, clock=clock)
    for step in range(1, 6):  # far below 10% each, 40 s apart
        clock.now += 40
        view.progress(ProgressUpdate("pretrain", step, 10_000, elapsed=clock.now))
        view.progress(ProgressUpdate("pretrain", step, 10_000, elapsed=clock.now))  # repeated: no line
    assert len(stream.getvalue().splitlines()) == 5


def test_listener_receives_notifications_and_notes(tmp_path, capfd):
    with RunConsole(tmp_path / "console.log", live=False):
        notify("stage_started", "clean")
        notify("stage_finished", "clean", "reused", "corpus-1a2b")
        notify("note", "pretrain", "resumed from step 20")
        notify("stage_finished", "eval/wikitext_perplexity", "failed", "RuntimeError: boom\ntraceback")
    notify("stage_started", "after")  # the listener is gone
    out, _ = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["-", "clean", "started"]
    assert lines[1].split()[:4] == ["✓", "clean", "reused", "corpus-1a2b"]
    assert lines[2].split() == ["pretrain", "resumed", "from", "step", "20"]
    assert lines[3].split()[:5] == ["✗", "eval/wikitext_perplexity", "failed", "RuntimeError:", "boom"]
    assert "traceback" not in out and "after" not in out


def test_live_view_draws_bars_and_finished_lines():
    terminal = io.StringIO()
    view = LiveView(Console(file=terminal, force_terminal=True, width=100))
    view.start()
    view.stage_started("pretrain")
    view.progress(ProgressUpdate("pretrain", 20, 40, metrics={"loss": 6.5}, elapsed=2.0))
    view.progress_bars.refresh()
    view.line("a line above the panel")
    view.stage_finished("pretrain", "completed", "model-1a2b")
    view.stop()
    text = terminal.getvalue()
    assert "step 20/40 · loss 6.500 · ETA 2s" in text
    assert "a line above the panel" in text and "model-1a2b" in text
    assert not view.progress_bars.tasks


def test_run_formatter_names_the_prefect_run():
    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished", None, None)
    record.task_run_name = "clean-ab7"
    assert RunFormatter("%(name)s: %(message)s").format(record) == "prefect.task_runs[clean-ab7]: Finished"
    assert record.name == "prefect.task_runs"


@pytest.mark.parametrize("make_view", ["plain", "live"])
def test_updates_arriving_after_the_stage_finished_are_dropped(make_view):
    terminal = io.StringIO()
    if make_view == "plain":
        view: PlainView | LiveView = PlainView(terminal)
    else:
        view = LiveView(Console(file=terminal, force_terminal=False, width=100))
    view.stage_started("finetune/sst2/random")
    view.progress(ProgressUpdate("finetune/sst2/random", 1, 8, metrics={"loss": 0.7}, elapsed=1.0))
    view.stage_finished("finetune/sst2/random", "completed", "finetune-1a2b")
    view.progress(ProgressUpdate("finetune/sst2/random", 8, 8, metrics={"loss": 0.6}, elapsed=2.0))
    lines = terminal.getvalue().splitlines()
    assert lines[-1].split()[:4] == ["✓", "finetune/sst2/random", "completed", "finetune-1a2b"]
    assert "step 1/8" not in lines[-1] and "ETA" not in lines[-1]  # an unfinished last report is left out
    assert "step 8/8" not in terminal.getvalue()
    if isinstance(view, LiveView):
        assert not view.progress_bars.tasks


def test_failed_stage_line_keeps_its_last_progress_without_eta():
    stream = io.StringIO()
    view = PlainView(stream)
    view.stage_started("pretrain")
    view.progress(ProgressUpdate("pretrain", 20, 40, metrics={"loss": 6.6}, elapsed=10.0))
    view.stage_finished("pretrain", "failed", "RuntimeError: worker died")
    last = stream.getvalue().splitlines()[-1]
    assert "RuntimeError: worker died" in last and "step 20/40 · loss 6.600" in last
    assert "ETA" not in last


def test_print_outside_the_block_goes_to_stdout(tmp_path, capsys):
    console = RunConsole(tmp_path / "console.log", live=False)
    with console:
        pass
    console.print("summary after the run")
    assert "summary after the run" in capsys.readouterr().out
    assert "summary after the run" not in (tmp_path / "console.log").read_text()


def test_ctrl_c_while_the_terminal_is_put_back_is_raised_afterwards():
    from lmforge.app.console import _interrupts_deferred

    # As in a terminal session: Python's own Ctrl-C handler (the test session may hold another).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here: it only records the signal
                survived = True
        assert survived
    finally:
        signal.signal(signal.SIGINT, previous)
