"""What a person watching `lmforge run` sees: a live panel on a terminal, short plain lines elsewhere.

Both views are `ProgressListener`s: stage starts, progress updates, notes and finished stages come
from `lmforge.infra.progress`, in any thread. Lines printed through a view (log records meant for the
terminal, the CLI's own lines) appear above the live panel instead of tearing it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from lmforge.infra.progress import ProgressListener, ProgressUpdate

STAGE_WIDTH = 42  # "finetune/sst2/finetune-2000-s0/pretrained", "eval/wikitext_perplexity"
MAX_DETAIL_CHARS = 200


class StageClock:
    """When each stage started and its latest update: what a finished line reports."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: dict[str, float] = {}
        self.latest: dict[str, ProgressUpdate] = {}
        self.finished: set[str] = set()

    def start(self, stage: str) -> None:
        self.started[stage] = self.clock()
        self.latest.pop(stage, None)
        self.finished.discard(stage)

    def accept(self, update: ProgressUpdate) -> bool:
        """Keep `update` unless its stage already finished: the relay polls the workers' reports,
        so the last ones can arrive after the stage's end."""
        if update.stage in self.finished:
            return False
        self.latest[update.stage] = update
        return True

    def finished_line(self, stage: str, status: str, detail: str) -> str:
        """`✓ clean   reused   corpus-1a2b (0.3 s)`, with the last progress when there was any."""
        self.finished.add(stage)
        mark = "✗" if status == "failed" else "✓"
        detail = detail.strip().splitlines()[0] if detail.strip() else ""
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        line = f"{mark} {stage:<{STAGE_WIDTH}} {status:<9} {detail}"
        started = self.started.pop(stage, None)
        if started is not None:
            line += f" ({self.clock() - started:.1f} s)"
        last = self.latest.pop(stage, None)
        if last is not None and (last.done >= last.total or status == "failed"):
            line += f" · {replace(last, elapsed=0.0).describe()}"  # elapsed 0: no ETA
        return line


class PlainView(ProgressListener):
    """One line per stage start, finish and note; a progress line per stage only for a new
    `percent_step`% at least `min_gap` seconds after the last one, or after `max_gap` seconds, so a
    CI log or `| tee` file stays short."""

    def __init__(
        self,
        stream: TextIO,
        percent_step: float = 10.0,
        min_gap: float = 5.0,
        max_gap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.percent_step = stream, percent_step
        self.min_gap, self.max_gap = min_gap, max_gap
        self.clock = clock
        self.stages = StageClock(clock)
        self._lock = threading.RLock()
        self._shown: dict[str, tuple[float, int, float]] = {}  # stage -> (percent bucket, done, time)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stream.flush()

    def line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def echo(self, text: str) -> None:
        """Raw output of the process (verbose mode), passed on as it is."""
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def stage_started(self, stage: str) -> None:
        self.stages.start(stage)
        self._shown.pop(stage, None)
        self.line(f"- {stage:<{STAGE_WIDTH}} started")

    def progress(self, update: ProgressUpdate) -> None:
        if self.stages.accept(update) and self._due(update):
            self.line(f"  {update.stage:<{STAGE_WIDTH}} {update.describe()}")

    def stage_finished(self, stage: str, status: str, detail: str) -> None:
        self._shown.pop(stage, None)
        self.line(self.stages.finished_line(stage, status, detail))

    def note(self, stage: str, text: str) -> None:
        self.line(f"  {stage:<{STAGE_WIDTH}} {text}")

    def _due(self, update: ProgressUpdate) -> bool:
        """The stage's first update, or one worth a line (see the class doc); the finished line
        carries the last."""
        now = self.clock()
        bucket = update.percent // self.percent_step
        with self._lock:
            shown = self._shown.get(update.stage)
            if shown is not None:
                last_bucket, last_done, last_time = shown
                waited = now - last_time
                new_bucket = bucket > last_bucket and waited >= self.min_gap
                if update.done == last_done or not (new_bucket or waited >= self.max_gap):
                    return False
            self._shown[update.stage] = (bucket, update.done, now)
            return True


class TerminalConsole(Console):
    """A rich console on a saved copy of the terminal: rich sizes itself from fds 0-2, which a
    `RunConsole` points at the log file."""

    def __init__(self, terminal_fd: int, **kwargs: Any) -> None:
        self.terminal_fd = terminal_fd
        super().__init__(**kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        try:
            columns, lines = os.get_terminal_size(self.terminal_fd)
        except OSError:
            columns, lines = 0, 0
        # Like rich: $COLUMNS and $LINES win over what the terminal reports.
        columns = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else columns
        lines = int(os.environ["LINES"]) if os.environ.get("LINES", "").isdigit() else lines
        return ConsoleDimensions(columns or 80, lines or 25)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


class DetailColumn(ProgressColumn):
    """The stage's latest `describe()`, or how long it has run (a stage that reports no progress)."""

    def render(self, task: Task) -> Text:
        detail = task.fields.get("detail") or f"running ({int(task.elapsed or 0)} s)"
        return Text(detail, no_wrap=True, overflow="ellipsis")


class LiveView(ProgressListener):
    """A live panel of the running stages (bar, steps, loss, tokens/s, ETA); finished stages, notes
    and printed lines scroll above it."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.stages = StageClock(clock)
        self.progress_bars = Progress(
            TextColumn("{task.fields[stage]}", markup=False),
            BarColumn(bar_width=16 if console.width >= 100 else 10),
            DetailColumn(),
            console=console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.RLock()
        self._partial = ""

    def start(self) -> None:
        self.progress_bars.start()

    def stop(self) -> None:
        with self._lock:
            if self._partial:
                self._print(Text.from_ansi(self._partial))
                self._partial = ""
            for task in self._tasks.values():
                self.progress_bars.remove_task(task)
            self._tasks.clear()
        self.progress_bars.stop()

    def line(self, text: str) -> None:
        self._print(Text(text))

    def echo(self, text: str) -> None:
        """Raw output of the process (verbose mode): whole lines go above the panel."""
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for raw in lines:
                # A `\r`-redrawn bar (tqdm): keep what the last redraw left on screen.
                shown = next((part for part in reversed(raw.split("\r")) if part.strip()), "")
                self._print(Text.from_ansi(shown))

    def stage_started(self, stage: str) -> None:
        self.stages.start(stage)
        with self._lock:
            if stage not in self._tasks:
                self._tasks[stage] = self.progress_bars.add_task(stage, total=None, stage=stage, detail="")

    def progress(self, update: ProgressUpdate) -> None:
        if not self.stages.accept(update):
            return
        with self._lock:
            if update.stage in self.stages.finished:  # finished while this update waited for the lock
                return
            task = self._tasks.get(update.stage)
            if task is None:
                task = self.progress_bars.add_task(update.stage, stage=update.stage, detail="")
                self._tasks[update.stage] = task
            self.progress_bars.update(
                task, completed=update.done, total=update.total or None, detail=update.describe()
            )

    def stage_finished(self, stage: str, status: str, detail: str) -> None:
        text = Text(self.stages.finished_line(stage, status, detail))  # first: late updates now dropped
        with self._lock:
            task = self._tasks.pop(stage, None)
            if task is not None:
                self.progress_bars.remove_task(task)
                self.progress_bars.refresh()  # else the printed line redraws the stale panel below it
        text.stylize("red" if status == "failed" else "green", 0, 1)
        self._print(text)

    def note(self, stage: str, text: str) -> None:
        self._print(Text(f"  {stage:<{STAGE_WIDTH}} {text}", style="dim"))

    def _print(self, text: Text) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)
