"""sha256 of raw input files, remembered per file so a re-run does not read its inputs again.

A stage's recipe names its raw inputs by content (infra/stage_runner.py); the clean stage's are the
whole corpus (31 MB for the demo). A record under `${LMFORGE_CACHE_DIR:-~/.cache/lmforge}/file-sha256/`
keeps a file's digest with the stat fields any change of its content moves: device, inode, size,
mtime and ctime (in ns; ctime cannot be set back by a user). A file whose stat differs from its
record is hashed again. One small JSON per file, replaced atomically, so concurrent runs never
corrupt each other's records.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from lmforge.core.logs import get_logger
from lmforge.infra.artifact_files import sha256_file
from lmforge.infra.remote_fs import lmforge_cache_dir

log = get_logger(__name__)
RECORDS_DIR = "file-sha256"
# A file changed within this many seconds of being hashed could change again within the same
# timestamp tick without its stat moving (git's "racily clean" entries): it is not recorded.
SETTLED_SECONDS = 2.0


def cache_dir() -> Path:
    return lmforge_cache_dir() / RECORDS_DIR


def stat_key(stat: os.stat_result) -> list[int]:
    """What a record must match: device, inode, size, mtime and ctime in ns."""
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def cached_sha256(path: Path, records: Path | None = None) -> str:
    """sha256 of `path`'s content: from its record when the file's stat still matches, else read
    (and recorded, once the file has settled)."""
    path = Path(path).resolve()
    records = cache_dir() if records is None else records
    record_path = records / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    before = path.stat()
    record = read_record(record_path)
    if record is not None and record.get("path") == str(path) and record.get("stat") == stat_key(before):
        return str(record["sha256"])
    digest = sha256_file(path)
    after = path.stat()
    settled = time.time() - after.st_mtime_ns / 1e9 > SETTLED_SECONDS
    if stat_key(after) == stat_key(before) and settled:
        write_record(record_path, {"path": str(path), "stat": stat_key(after), "sha256": digest})
    return digest


def read_record(record_path: Path) -> dict[str, Any] | None:
    """A cache record (a JSON object), or None when it is missing or unreadable."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(record_path: Path, record: dict[str, Any]) -> None:
    """Replace a cache record atomically. Best effort: a read-only or full cache folder only means
    computing again next time."""
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_name(f".{record_path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, record_path)
    except OSError as err:
        log.debug("could not write the cache record %s: %s", record_path, err)
