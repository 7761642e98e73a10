"""Checking an artifact's files against its manifest: in full (re-hash) or before reuse (stat record).

Reuse trusts a file whose size and modification time (ns) still equal what was recorded when it was
hashed, and re-hashes only the others. Why not re-hash on every reuse: sha256 reads ~1 GB/s per core,
every pipeline run reuses up to eight artifacts, and a model artifact is gigabytes, so each run
would spend minutes reading what it does not need; a stat() costs microseconds. A file rewritten
in place gets a new mtime (and usually a new size) and is re-hashed. What the stat check cannot see
(bit rot, or an edit that restores the old mtime) `lmforge verify` finds, which always re-hashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.infra.lineage import sha256_file, sha256_json

# Beside manifest.json, outside data/: a cache of (size, mtime_ns) per file, not part of the record;
# rewritten when a store copied without its timestamps re-hashes clean.
STAT_RECORD = "filestat.json"
FileStats = dict[str, list[int]]

# Files below data/telemetry/ describe how an artifact was made (wall-clock times, tokens/s, MFU,
# TensorBoard event files), not what it is: they are verified like every file but left out of the
# content id, so recomputing a stage on another day or machine yields the same artifact id.
TELEMETRY_DIR = "telemetry"


def hash_tree(root: Path) -> list[dict[str, Any]]:
    """sha256 and size of every file below `root`, sorted by relative path."""
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        records.append(
            {
                "path": path.relative_to(root).as_posix(),
                "sha256": sha256_file(path),
                "size": path.stat().st_size,
            }
        )
    return records


def is_telemetry(relative_path: str) -> bool:
    return relative_path == TELEMETRY_DIR or relative_path.startswith(TELEMETRY_DIR + "/")


def content_id_of(files: list[dict[str, Any]], inputs: list[tuple[Any, Any, Any]]) -> str:
    """Identity of an artifact: its files' hashes (telemetry excluded) and its raw inputs' hashes."""
    identity = [
        {key: record[key] for key in ("path", "sha256", "size")}
        for record in files
        if not is_telemetry(record["path"])
    ]
    return sha256_json({"files": identity, "inputs": inputs})


def file_stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def stat_record(data_dir: Path, files: list[dict[str, Any]]) -> FileStats:
    """(size, mtime_ns) of every recorded file, taken right after the files were hashed."""
    return {record["path"]: file_stat(data_dir / record["path"]) for record in files}


def read_stat_record(path: Path) -> FileStats:
    """The stat record at `path`; empty when missing or unreadable, so that every file is re-hashed."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # published before stat records existed, or damaged
    return value if isinstance(value, dict) else {}


def content_id_problems(manifest: dict[str, Any], manifest_path: Path) -> list[str]:
    """A problem if the manifest's file list and inputs no longer hash to its content id."""
    inputs = [
        (record["uri"], record["sha256"], record["size"]) for record in manifest.get("external_files", [])
    ]
    if content_id_of(manifest["files"], inputs) == manifest["content_id"]:
        return []
    return [f"manifest: {manifest_path} file list does not match its content_id"]


def file_problems(data_dir: Path, files: list[dict[str, Any]], trusted: FileStats | None = None) -> list[str]:
    """One problem per missing, changed or unexpected file below `data_dir`.

    A file whose (size, mtime_ns) equals its entry in `trusted` is not read; `trusted=None` re-hashes all.
    """
    problems = []
    for record in files:
        path = data_dir / record["path"]
        if not path.is_file():
            problems.append(f"missing file: {path}")
            continue
        stat = file_stat(path)
        if trusted is not None and trusted.get(record["path"]) == stat and stat[0] == record["size"]:
            continue
        if stat[0] != record["size"] or sha256_file(path) != record["sha256"]:
            problems.append(f"changed file: {path} (expected sha256 {record['sha256']})")
    return problems + unexpected_files(data_dir, files)


def unexpected_files(data_dir: Path, files: list[dict[str, Any]]) -> list[str]:
    """Files below `data_dir` that the manifest does not list (listing a tree reads no file)."""
    if not data_dir.is_dir():
        return []
    recorded = {record["path"] for record in files}
    return [
        f"unexpected file: {path}"
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file())
        if path.relative_to(data_dir).as_posix() not in recorded
    ]
