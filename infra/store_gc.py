"""`lmforge gc`: remove orphaned staging and work directories, never one a live process holds.

For a URL store (infra/remote_store.py) this collects this node's side only: staging and
downloads in flight under the local cache's tmp/, local work directories, and idle lock files. The
remote store is untouched: its quarantine/ and any orphaned `<url>/work/<slot>/` stay until removed
with the object store's own tools, and cached artifact copies (`<cache>/artifacts/`) are kept,
since a reader on this node may be using them (delete the cache folder when no run is active).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.core.errors import ConfigError
from lmforge.infra.locks import LOCKS_DIR, Holder, hold_if_free, read_holder
from lmforge.infra.store import ArtifactStore

GC_HOLDER = "lmforge-gc"
DEFAULT_OLDER_THAN = "24h"
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Store subfolder -> kind of the lock that owns each entry in it (see infra/locks.py).
OWNED_DIRS = {"tmp": "staging", "work": "recipe"}


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '2h', '7d' or '1w'; ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise ConfigError(f"--older-than {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 2h")
    return float(match[1]) * UNIT_SECONDS[match[2]]


@dataclass
class GcReport:
    """What a collection removed (or would remove, in a dry run) and what it left because in use."""

    removed: list[tuple[Path, int]] = field(default_factory=list)
    in_use: list[tuple[Path, Holder | None]] = field(default_factory=list)
    num_lock_files: int = 0

    @property
    def num_bytes(self) -> int:
        return sum(size for _, size in self.removed)


def collect_garbage(store: ArtifactStore, older_than: float, dry_run: bool = False) -> GcReport:
    """Remove tmp/, work/ and quarantine/ entries untouched for `older_than` seconds and not in use.

    "In use" means a live process holds the entry's lock; the kernel drops the lock of a process that
    died, so what a crashed run left behind is collected once it is old enough. A work directory
    younger than the cutoff is kept: it may be the checkpoint a re-run will resume from.
    """
    cutoff = time.time() - older_than
    report = GcReport()
    for sub, kind in OWNED_DIRS.items():
        for path in sorted((store.root / sub).iterdir()):
            lock_path = store.lock_path(kind, path.name)
            with _owned(lock_path, dry_run) as free:
                if not free:
                    report.in_use.append((path, read_holder(lock_path)))
                elif newest_mtime(path) < cutoff:
                    _remove(path, dry_run, report)
                    if kind == "staging" and not dry_run:
                        lock_path.unlink(missing_ok=True)  # still held: safe, see hold_if_free
    quarantine = store.root / "quarantine"
    for path in sorted(quarantine.iterdir()) if quarantine.is_dir() else []:
        if newest_mtime(path) < cutoff:
            _remove(path, dry_run, report)
    if not dry_run:
        report.num_lock_files = _sweep_lock_files(store, cutoff)
    return report


@contextmanager
def _owned(lock_path: Path, dry_run: bool) -> Iterator[bool]:
    """Hold the entry's lock while deciding and removing; a dry run creates no lock file."""
    if dry_run and not lock_path.exists():
        yield True
        return
    with hold_if_free(lock_path, GC_HOLDER) as free:
        yield free


def _remove(path: Path, dry_run: bool, report: GcReport) -> None:
    report.removed.append((path, tree_bytes(path)))
    if dry_run:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sweep_lock_files(store: ArtifactStore, cutoff: float) -> int:
    """Unlink idle recipe and staging lock files whose directory is gone (run locks are kept)."""
    removed = 0
    for lock_path in sorted((store.root / LOCKS_DIR).glob("*.lock")):
        kind, _, name = lock_path.stem.partition("-")
        owned = {value: key for key, value in OWNED_DIRS.items()}.get(kind)
        if owned is None or (store.root / owned / name).exists() or newest_mtime(lock_path) >= cutoff:
            continue
        with hold_if_free(lock_path, GC_HOLDER) as free:
            if free:
                lock_path.unlink(missing_ok=True)
                removed += 1
    return removed


def _entries(path: Path) -> Iterator[os.stat_result]:
    """lstat of `path` and everything below it (symlinks are not followed)."""
    yield path.lstat()
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                yield os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue  # removed while we walk


def newest_mtime(path: Path) -> float:
    """Latest modification below `path`: a run still writing checkpoints keeps its directory young."""
    return max(entry.st_mtime for entry in _entries(path))


def tree_bytes(path: Path) -> int:
    """Apparent size of the files below `path`."""
    return sum(entry.st_size for entry in _entries(path) if not stat.S_ISDIR(entry.st_mode))
