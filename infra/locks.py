"""Locks between processes sharing one store: kernel file locks (flock) that die with their holder.

Lock files live under `<store>/locks/`:

    recipe-<slot>.lock    held while a stage looks up, computes or publishes that recipe; guards work/<slot>/
    staging-<name>.lock   held while tmp/<name>/ is being written (one per attempt)
    run-<run_id>.lock     held by the process running that pipeline run

While held, a lock file names its holder (run id, pid, host, since) so that a waiter can say whom it
waits for. The note outlives the hold; only the lock itself says whether anyone holds it now.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lmforge.core.errors import ArtifactError

LOCKS_DIR = "locks"
Holder = dict[str, Any]


def holder_note(run_id: str | None) -> Holder:
    """Who takes a lock now: this process, on this host, for `run_id`."""
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "since": since}


def describe_holder(holder: Holder | None) -> str:
    if not holder:
        return "holder unknown"
    return f"run {holder.get('run_id')}, pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def read_holder(path: Path) -> Holder | None:
    """The note the last holder wrote into a lock file (None if absent or being rewritten)."""
    try:
        value = json.loads(Path(path).read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _file_lock(path: Path, on_acquired: Callable[[int], None] | None = None) -> FileLock:
    # fallback_to_soft=False: a soft lock (a marker file) outlives a crashed holder, and then every
    # later run of the recipe would wait forever; better to fail loudly on a filesystem without flock.
    return FileLock(
        str(path), thread_local=False, fallback_to_soft=False, on_acquired=on_acquired, poll_interval=0.2
    )


class StoreLock:
    """An exclusive lock on one file under `<store>/locks/`, noting its holder while held."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _file_lock(self.path, on_acquired=self._write_note)

    def _write_note(self, fd: int) -> None:
        note = json.dumps(holder_note(self.run_id)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        try:
            self._take(blocking=False)
        except Timeout:
            return False
        return True

    def acquire(self, on_wait: Callable[[Holder | None], None] | None = None) -> None:
        """Take the lock, waiting as long as another live process holds it; `on_wait` is told once."""
        if self.try_acquire():
            return
        if on_wait is not None:
            on_wait(self._holder_note_when_written())
        self._take(blocking=True)

    def _holder_note_when_written(self, seconds: float = 1.0) -> Holder | None:
        """The holder's note. A holder writes it just after taking the lock, so a process that arrives
        in between reads an empty file: it reads again for up to `seconds` before calling the holder
        unknown (a holder that released in the meantime leaves its note, and that is named)."""
        deadline = time.monotonic() + seconds
        while (holder := read_holder(self.path)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return holder

    def _take(self, blocking: bool) -> None:
        try:
            self._lock.acquire(blocking=blocking)
        except Timeout:
            raise
        except OSError as err:
            raise ArtifactError(f"cannot lock {self.path}: {err} (the store needs flock support)") from None

    def release(self) -> None:
        self._lock.release()

    @contextmanager
    def held(self, on_wait: Callable[[Holder | None], None] | None = None) -> Iterator[StoreLock]:
        self.acquire(on_wait)
        try:
            yield self
        finally:
            self.release()


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock at `path` now (a missing lock file is not held)."""
    if not Path(path).exists():
        return False
    probe = _file_lock(Path(path))
    try:
        probe.acquire(blocking=False)
    except Timeout:
        return True
    probe.release()
    return False


@contextmanager
def hold_if_free(path: Path, run_id: str) -> Iterator[bool]:
    """Hold the lock at `path` for the block if nobody does (yields False, holding nothing, otherwise).

    Unlinking the lock file inside the block is safe: a process that opened the old file and waits
    on it notices the unlink once it gets the lock and retries on a fresh file (filelock checks st_nlink).
    """
    lock = StoreLock(path, run_id)
    if not lock.try_acquire():
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
