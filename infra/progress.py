"""Progress of long stages, from the process doing the work to whoever watches it.

Work reports through a `ProgressReporter` (in a Ray worker or in the driver). Reports of a pipeline run
go to the run's board, a small Ray actor named after the run; the driver's `ProgressRelay` polls it and
hands each new report to the listeners registered in the driver process (the terminal display, the
Prefect progress artifacts). A reporter without a board calls the local listeners directly. Progress
is advisory: a lost report never fails the work.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from lmforge.core.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ProgressUpdate:
    """Where one stage stands: `done` of `total` units, with its latest metrics (loss, tokens/s...)."""

    stage: str
    done: int
    total: int
    unit: str = "step"
    metrics: dict[str, float] = field(default_factory=dict)
    # `done` when this attempt started (a resumed run starts past 0) and seconds since then: the rate.
    start_done: int = 0
    elapsed: float = 0.0
    # A notable event of the attempt, such as the step pre-training resumed from.
    note: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * min(self.done, self.total) / self.total if self.total else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at this attempt's rate so far; None until a unit was done."""
        finished = self.done - self.start_done
        if finished <= 0 or self.elapsed <= 0:
            return None
        return max(self.total - self.done, 0) * self.elapsed / finished

    def describe(self) -> str:
        """`step 120/400 · loss 3.210 · 12.3k tok/s · ETA 1m05s` (only what is known)."""
        parts = [f"{self.unit} {self.done}/{self.total}"]
        if "epoch" in self.metrics:
            parts.append(f"epoch {int(self.metrics['epoch'])}")
        if "loss" in self.metrics:
            parts.append(f"loss {self.metrics['loss']:.3f}")
        if "tokens_per_s" in self.metrics:
            parts.append(f"{human_count(self.metrics['tokens_per_s'])} tok/s")
        eta = self.eta_seconds()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {human_duration(eta)}")
        return " · ".join(parts)


class ProgressListener:
    """What the driver tells watchers; a subclass overrides what it shows. Calls may come from any thread."""

    def stage_started(self, stage: str) -> None:
        """A stage began (before its recipe lookup)."""

    def progress(self, update: ProgressUpdate) -> None:
        """A newer report of a running stage."""

    def stage_finished(self, stage: str, status: str, detail: str) -> None:
        """A stage ended: status `published`, `reused` or `failed`; detail: artifact id or error."""

    def note(self, stage: str, text: str) -> None:
        """A notable event of a stage, worth a line of its own."""


_listeners: list[ProgressListener] = []
_listeners_lock = threading.Lock()


def add_listener(listener: ProgressListener) -> None:
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: ProgressListener) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def notify(method: str, *args: Any) -> None:
    """Call `method` on every registered listener; a failing listener is logged, never raised."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            getattr(listener, method)(*args)
        except Exception as err:  # a display must never fail the work it shows
            log.debug("progress listener %r failed in %s: %s", listener, method, err)


def stage_started(stage: str) -> None:
    notify("stage_started", stage)


def stage_finished(stage: str, status: str, detail: str) -> None:
    notify("stage_finished", stage, status, detail)


@dataclass(frozen=True)
class ProgressTarget:
    """Where a stage's reports go: the run's board (a Ray actor name), or None for this process."""

    stage: str
    board: str | None = None


class ProgressReporter:
    """Reports one stage's progress, at most every `min_interval` seconds unless forced."""

    def __init__(
        self,
        target: ProgressTarget | None,
        total: int,
        unit: str = "step",
        start_done: int = 0,
        min_interval: float = 0.5,
    ) -> None:
        self.target, self.total, self.unit = target, total, unit
        self.start_done, self.min_interval = start_done, min_interval
        self._started = time.monotonic()
        self._last_sent = float("-inf")
        self._board: Any = None
        self._note: str | None = None
        self._previous: ProgressUpdate | None = None

    def update(self, done: int, force: bool = False, /, **metrics: float) -> None:
        if self.target is None:
            return
        now = time.monotonic()
        if not force and done < self.total and now - self._last_sent < self.min_interval:
            return
        self._last_sent = now
        self._send(
            ProgressUpdate(
                stage=self.target.stage,
                done=done,
                total=self.total,
                unit=self.unit,
                metrics={key: float(value) for key, value in metrics.items()},
                start_done=self.start_done,
                elapsed=now - self._started,
                note=self._note,
            )
        )

    def note(self, text: str) -> None:
        """Attach a notable event to this and later reports (shown once by the relay)."""
        self._note = text
        self.update(self.start_done, True)

    def _send(self, update: ProgressUpdate) -> None:
        assert self.target is not None
        if self.target.board is None:
            relay_update(update, self._previous)
            self._previous = update
            return
        try:
            if self._board is None:
                import ray

                self._board = ray.get_actor(self.target.board)
            self._board.put.remote(update)
        except Exception as err:  # the run's board is gone (run ended): stop reporting
            log.debug("progress board %s unreachable: %s", self.target.board, err)
            self.target = None


def relay_update(update: ProgressUpdate, previous: ProgressUpdate | None) -> None:
    """Hand one update to the listeners, its note too when it is new."""
    if update.note and (previous is None or previous.note != update.note):
        log.info("%s: %s", update.stage, update.note)
        notify("note", update.stage, update.note)
    notify("progress", replace(update, note=None))


class _Board:
    """The run's board: the latest update of each stage, numbered so the relay asks for news only."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, ProgressUpdate]] = {}
        self.sequence = 0

    def put(self, update: ProgressUpdate) -> None:
        self.sequence += 1
        self.latest[update.stage] = (self.sequence, update)

    def since(self, sequence: int) -> tuple[int, list[ProgressUpdate]]:
        news = sorted((seq, update) for seq, update in self.latest.values() if seq > sequence)
        return self.sequence, [update for _, update in news]


class ProgressRelay:
    """Driver side of one run: its board and the relay of the board's news to the listeners.

    The board (a Ray actor) is created on the first `target()` or `start()`, not on entering: a run
    whose stages are all reused never starts Ray for it.
    """

    def __init__(self, run_id: str, poll_seconds: float = 1.0) -> None:
        self.board_name = "lmforge-progress-" + "".join(ch if ch.isalnum() else "-" for ch in run_id)
        self.poll_seconds = poll_seconds
        self._actor: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._last: dict[str, ProgressUpdate] = {}
        self._drain_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._context: contextvars.Context | None = None

    def target(self, stage: str) -> ProgressTarget:
        """Where `stage` reports: the board, which starts (with Ray) when the first stage asks."""
        self.start()
        return ProgressTarget(stage=stage, board=self.board_name)

    def start(self) -> ProgressRelay:
        """Create the board (starting Ray where the run planned it) and the poller; idempotent."""
        with self._start_lock:
            if self._actor is not None:
                return self
            import ray

            from lmforge.infra.ray_runtime import ensure_ray

            ensure_ray()
            self._actor = (
                ray.remote(num_cpus=0, max_restarts=0)(_Board)
                .options(name=self.board_name, get_if_exists=True)
                .remote()
            )
            # The poller runs in the context the relay was entered in (the flow's), not in the
            # stage task's that started it: listeners that call an API (Prefect's settings and run
            # context are context variables) see what the flow sees.
            context = self._context or contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._poll,), name="lmforge-progress", daemon=True
            )
            self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._actor is not None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drain()
        if self._actor is not None:
            import ray

            try:
                ray.kill(self._actor)
            except Exception as err:
                log.debug("progress board %s: %s", self.board_name, err)
            self._actor = None

    def __enter__(self) -> ProgressRelay:
        self._context = contextvars.copy_context()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Relay what the board holds now (before telling listeners a stage ended)."""
        self._drain()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._drain()

    def _drain(self) -> None:
        if self._actor is None:
            return
        import ray

        with self._drain_lock:  # the poller and a flush() may overlap
            try:
                self._sequence, news = ray.get(self._actor.since.remote(self._sequence), timeout=10)
            except Exception as err:  # Ray shutting down: nothing more to show
                log.debug("progress board %s: %s", self.board_name, err)
                return
            for update in news:
                relay_update(update, self._last.get(update.stage))
                self._last[update.stage] = update


def human_count(value: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def human_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
