"""Content-addressed artifact store with lineage manifests and atomic publishing.

Layout under the store root:

    artifacts/<artifact_id>/manifest.json   the record (written last: no manifest, no artifact)
    artifacts/<artifact_id>/data/...        the artifact's files
    artifacts/<artifact_id>/data/telemetry/ how the run went (timings, throughput, event files):
                                            hashed and verified, but not part of the content id
    recipes/<recipe_key>.json               recipe -> artifact id, for reuse across runs
    runs/<run_id>/run.json                  one record per pipeline run
    tmp/                                    staging; never read as artifacts
    work/<recipe_key>/                      a stage's scratch space (e.g. resumable training checkpoints)

Publishing stages files under tmp/ and renames the whole directory into artifacts/ in one step, so a
crash leaves at most an orphaned staging directory, never a partial artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError
from lmforge.infra.lineage import code_version, environment, sha256_file, sha256_json

MANIFEST = "manifest.json"
DATA_DIR = "data"
SCHEMA_VERSION = 1
DEFAULT_STORE = "./lmforge-store"
# Files below data/telemetry/ describe how an artifact was made (wall-clock times, tokens/s, MFU,
# TensorBoard event files), not what it is: they are verified like every file but left out of the
# content id, so recomputing a stage on another day or machine yields the same artifact id.
TELEMETRY_DIR = "telemetry"
STORE_ENV = "LMFORGE_STORE"


@dataclass(frozen=True)
class ExternalFile:
    """A file outside the store that an artifact was made from (raw inputs); hashed, never copied."""

    uri: str
    path: Path | None


def hash_external(files: list[ExternalFile]) -> list[dict[str, Any]]:
    """Records (uri, path, sha256, size) for raw inputs; remote datasets are recorded by URI only."""
    records: list[dict[str, Any]] = []
    for item in files:
        if item.path is None:
            records.append({"uri": item.uri, "path": None, "sha256": None, "size": None})
        else:
            records.append(
                {
                    "uri": item.uri,
                    "path": str(item.path),
                    "sha256": sha256_file(item.path),
                    "size": item.path.stat().st_size,
                }
            )
    return records


def default_store_root() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file an artifact holds; ArtifactError naming the file (and `what` it should be)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; is {Path(path).parent} {what}?") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


class ArtifactStore:
    """A store on a local or mounted shared filesystem (a Ray cluster needs the latter).

    Publishing relies on an atomic directory rename; an object-store backend would need another
    commit step (the manifest written last is the visibility marker either way).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        for sub in ("artifacts", "recipes", "runs", "tmp", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- writing -----------------------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory on the store's filesystem to write an artifact's files into.

        Removed afterwards unless it was published (publishing moves it).
        """
        path = self.root / "tmp" / uuid.uuid4().hex
        (path / DATA_DIR).mkdir(parents=True)
        try:
            yield path / DATA_DIR
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(
        self,
        data_dir: Path,
        *,
        kind: str,
        stage: str,
        parents: list[str],
        config: Any,
        recipe_key: str,
        seed: int | None = None,
        metrics: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        run_id: str | None = None,
        code_fingerprint: str | None = None,
        external_files: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hash `data_dir` (a directory from `staging()`), write its manifest and make it visible atomically."""
        staged = data_dir.parent
        if staged.parent != self.root / "tmp" or data_dir.name != DATA_DIR:
            raise ArtifactError(f"publish expects a directory from ArtifactStore.staging(), got {data_dir}")
        for parent in parents:
            self.get(parent)  # a parent that does not exist is a bug upstream; fail before publishing
        files = hash_tree(data_dir)
        external = list(external_files or [])
        # Paths of raw inputs differ between machines; their identity is the URI and the bytes.
        inputs = [(record["uri"], record["sha256"], record["size"]) for record in external]
        content_id = content_id_of(files, inputs)
        artifact_id = f"{kind}-{sha256_json([content_id, recipe_key])[:16]}"
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "id": artifact_id,
            "kind": kind,
            "stage": stage,
            "content_id": content_id,
            "created_at": utc_now(),
            "run_id": run_id,
            "parents": list(parents),
            "recipe_key": recipe_key,
            "config": config,
            "seed": seed,
            "code": {**code_version(), "fingerprint": code_fingerprint},
            "environment": environment(),
            "timings": timings or {},
            "metrics": metrics or {},
            "files": files,
            "external_files": external,
            "extra": extra or {},
        }
        write_json_atomic(staged / MANIFEST, manifest)
        final = self.root / "artifacts" / artifact_id
        if not (final / MANIFEST).exists():
            try:
                os.rename(staged, final)
            except OSError as err:
                # Lost a race with another process publishing the same content from the same recipe.
                if not (final / MANIFEST).exists():
                    raise ArtifactError(
                        f"cannot publish {artifact_id}: {final} exists without a manifest ({err})"
                    ) from None
        # Same content from the same recipe may already have been stored: its record is kept.
        existing = self.get(artifact_id)
        write_json_atomic(self.root / "recipes" / f"{recipe_key}.json", {"artifact_id": artifact_id})
        return existing

    def work_dir(self, recipe_key: str) -> Path:
        """Scratch space for one recipe; kept when a stage crashes so that its re-run can resume."""
        path = self.root / "work" / recipe_key[:32]
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reading -----------------------------------------------------------------------------------

    def get(self, artifact_id: str) -> dict[str, Any]:
        manifest_path = self.root / "artifacts" / artifact_id / MANIFEST
        try:
            return json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"no artifact {artifact_id!r} in store {self.root}") from None
        except json.JSONDecodeError as err:
            raise ArtifactError(f"manifest of {artifact_id} is corrupt ({manifest_path}): {err}") from None

    def data_path(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / artifact_id / DATA_DIR

    def find_by_recipe(self, recipe_key: str) -> dict[str, Any] | None:
        pointer = self.root / "recipes" / f"{recipe_key}.json"
        if not pointer.exists():
            return None
        artifact_id = json.loads(pointer.read_text())["artifact_id"]
        try:
            return self.get(artifact_id)
        except ArtifactError:
            return None

    def manifests(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Manifests of every published artifact (optionally of one kind), sorted by id."""
        manifests = []
        for path in sorted((self.root / "artifacts").glob(f"*/{MANIFEST}")):
            manifest = json.loads(path.read_text())
            if kind is None or manifest["kind"] == kind:
                manifests.append(manifest)
        return manifests

    def verify(self, artifact_id: str) -> list[str]:
        """Re-hash every file; return one problem per changed, missing or unexpected file (empty = intact)."""
        manifest = self.get(artifact_id)
        root = self.data_path(artifact_id)
        problems = []
        recorded = {record["path"] for record in manifest["files"]}
        for record in manifest["files"]:
            path = root / record["path"]
            if not path.is_file():
                problems.append(f"missing file: {path}")
            elif path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
                problems.append(f"changed file: {path} (expected sha256 {record['sha256']})")
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.relative_to(root).as_posix() not in recorded:
                    problems.append(f"unexpected file: {path}")
        inputs = [
            (record["uri"], record["sha256"], record["size"]) for record in manifest.get("external_files", [])
        ]
        if content_id_of(manifest["files"], inputs) != manifest["content_id"]:
            problems.append(
                f"manifest: {self.root / 'artifacts' / artifact_id / MANIFEST} file list does not match its content_id"
            )
        for record in manifest.get("external_files", []):
            if record["path"] is None:
                continue
            path = Path(record["path"])
            if not path.is_file():
                problems.append(f"missing input file: {path}")
            elif sha256_file(path) != record["sha256"]:
                problems.append(f"changed input file: {path} (expected sha256 {record['sha256']})")
        return problems

    def lineage(self, artifact_id: str) -> dict[str, Any]:
        """The artifact and its ancestors as a tree, down to the raw input files."""
        manifest = self.get(artifact_id)
        return {
            "id": manifest["id"],
            "kind": manifest["kind"],
            "stage": manifest["stage"],
            "created_at": manifest["created_at"],
            "run_id": manifest.get("run_id"),
            "content_id": manifest["content_id"],
            "code": {k: manifest["code"].get(k) for k in ("git_commit", "git_dirty")},
            "inputs": [
                {"uri": record["uri"], "sha256": record["sha256"], "size": record["size"]}
                for record in manifest.get("external_files", [])
            ],
            "parents": [self.lineage(parent) for parent in manifest["parents"]],
        }

    # -- runs --------------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def write_run_record(self, run_id: str, record: dict[str, Any]) -> Path:
        path = self.run_dir(run_id) / "run.json"
        write_json_atomic(path, record)
        return path


def format_lineage(
    node: dict[str, Any], prefix: str = "", is_last: bool = True, is_root: bool = True
) -> list[str]:
    """Render a lineage tree as indented text lines."""
    connector = "" if is_root else ("`-- " if is_last else "|-- ")
    commit = node["code"].get("git_commit") or "unknown"
    dirty = "+dirty" if node["code"].get("git_dirty") else ""
    lines = [
        f"{prefix}{connector}{node['id']}  [{node['stage']}]  {node['created_at']}  code {commit[:12]}{dirty}"
    ]
    child_prefix = prefix if is_root else prefix + ("    " if is_last else "|   ")
    children: list[tuple[str, Any]] = [("input", item) for item in node["inputs"]]
    children += [("artifact", parent) for parent in node["parents"]]
    for index, (kind, child) in enumerate(children):
        last = index == len(children) - 1
        if kind == "input":
            digest = (
                f"sha256 {child['sha256'][:16]}  {child['size']} bytes"
                if child["sha256"]
                else "(remote dataset)"
            )
            lines.append(f"{child_prefix}{'`-- ' if last else '|-- '}{child['uri']}  {digest}")
        else:
            lines.extend(format_lineage(child, child_prefix, last, is_root=False))
    return lines
