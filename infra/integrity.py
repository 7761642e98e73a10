"""Checking an artifact's files against its manifest: in full (sha256) or before reuse (fast hash).

Before reuse every file is read and checked against its size and a fast hash (xxh3-64) recorded at
publish. Why not sha256: it reads ~1 GB/s per core and every run reuses up to eight artifacts, some
of them gigabytes; xxh3 runs at memory speed, so the check costs about what reading the files costs,
and unlike a size + mtime check it sees bit rot and edits that keep the old timestamp. It is not a
defence against someone forging a file: `lmforge verify` re-hashes with sha256 against the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import xxhash

from lmforge.infra.artifact_files import TELEMETRY_DIR, digest_file, sha256_file
from lmforge.infra.lineage import sha256_json

# Beside manifest.json, outside data/: size and xxh3-64 per file, taken when the files were hashed.
FAST_HASH_RECORD = "fasthash.json"
FastHashes = dict[str, list[Any]]  # path -> [size, xxh3-64 hex]


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


def fast_hash(path: Path) -> str:
    return digest_file(path, xxhash.xxh3_64())


def fast_hash_record(data_dir: Path, files: list[dict[str, Any]]) -> FastHashes:
    """[size, xxh3-64] of every recorded file, taken right after the files were hashed."""
    return {record["path"]: [record["size"], fast_hash(data_dir / record["path"])] for record in files}


def read_fast_hashes(path: Path) -> FastHashes:
    """The record at `path`; empty when missing or unreadable, so that every file is checked by sha256."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # published before fast hashes existed, or damaged
    return value if isinstance(value, dict) else {}


def content_id_problems(manifest: dict[str, Any], manifest_path: Path) -> list[str]:
    """A problem if the manifest's file list and inputs no longer hash to its content id."""
    inputs = [
        (record["uri"], record["sha256"], record["size"]) for record in manifest.get("external_files", [])
    ]
    if content_id_of(manifest["files"], inputs) == manifest["content_id"]:
        return []
    return [f"manifest: {manifest_path} file list does not match its content_id"]


def file_problems(data_dir: Path, files: list[dict[str, Any]], fast: FastHashes | None = None) -> list[str]:
    """One problem per missing, changed or unexpected file below `data_dir`.

    A file with an entry in `fast` is checked by size and xxh3-64, the others by size and sha256
    (`fast=None`: every file by sha256, as `lmforge verify` does).
    """
    problems = []
    for record in files:
        path = data_dir / record["path"]
        if not path.is_file():
            problems.append(f"missing file: {path}")
            continue
        size, expected_fast = (fast or {}).get(record["path"], [record["size"], None])
        if path.stat().st_size != record["size"] or size != record["size"]:
            problems.append(f"changed file: {path} (expected {record['size']} bytes)")
        elif expected_fast is not None and fast_hash(path) != expected_fast:
            problems.append(f"changed file: {path} (expected xxh3 {expected_fast})")
        elif expected_fast is None and sha256_file(path) != record["sha256"]:
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
