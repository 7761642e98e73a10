"""Content-addressed artifact store with lineage manifests and atomic publishing.

Layout under the store root:

    artifacts/<artifact_id>/manifest.json   the record (written last: no manifest, no artifact)
    artifacts/<artifact_id>/fasthash.json   size + xxh3-64 per file when hashed: the pre-reuse check
    artifacts/<artifact_id>/data/...        the artifact's files
    artifacts/<artifact_id>/data/telemetry/ how the run went (timings, throughput, event files):
                                            hashed and verified, but not part of the content id
    recipes/<recipe_key>.json               recipe -> artifact id, for reuse across runs
    runs/<run_id>/run.json                  one record per pipeline run
    tmp/<attempt>/                          staging, one per attempt; never read as artifacts
    work/<recipe slot>/                     a stage's scratch space (e.g. resumable training checkpoints)
    locks/                                  kernel file locks (see infra/locks.py)
    quarantine/<artifact_id>-<when>/        damaged artifacts moved aside before recomputing them

Publishing stages files under tmp/ and renames the whole directory into artifacts/ in one step, so a
crash leaves at most an orphaned staging directory, never a partial artifact. Concurrent runs
coordinate through locks: the stage runner holds a recipe's lock while it looks up, computes and
publishes it, and that lock also owns the recipe's work directory; `lmforge gc` removes staging and
work directories whose lock nobody holds.

The store may also be a URL (`s3://bucket/prefix`, any fsspec filesystem): `open_store` returns a
`RemoteArtifactStore` (infra/remote_store.py) with the same layout there and a local cache here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.core.logs import get_logger
from lmforge.infra.artifact_files import sha256_file
from lmforge.infra.file_hashes import cached_sha256
from lmforge.infra.integrity import (
    FAST_HASH_RECORD,
    content_id_of,
    content_id_problems,
    fast_hash_record,
    file_problems,
    hash_tree,
    read_fast_hashes,
)
from lmforge.infra.lineage import code_version, environment, sha256_json
from lmforge.infra.locks import LOCKS_DIR, StoreLock
from lmforge.infra.remote_fs import is_url, local_path_of

log = get_logger(__name__)

MANIFEST = "manifest.json"
DATA_DIR = "data"
SCHEMA_VERSION = 1
DEFAULT_STORE = "./lmforge-store"
STORE_ENV = "LMFORGE_STORE"
# work/ and locks/ name a recipe by this many hex digits of its key (128 bits: no collisions).
RECIPE_SLOT_CHARS = 32


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
                    # Remembered by stat: a re-run does not read its whole corpus again.
                    "sha256": cached_sha256(item.path),
                    "size": item.path.stat().st_size,
                }
            )
    return records


def default_store_location() -> str:
    """`$LMFORGE_STORE`, else `./lmforge-store`: a local path or a store URL."""
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def default_store_root() -> Path:
    """The default store as a local path (callers that accept URLs use `default_store_location`)."""
    return Path(default_store_location())


def check_store_location(location: str | Path) -> None:
    """For a URL: ConfigError (`store: ...`) when its scheme has no filesystem or its bucket is missing."""
    if is_url(location):
        from lmforge.infra.remote_fs import check_location

        check_location(str(location))


def open_store(location: str | Path | None = None) -> ArtifactStore:
    """The store at a local path or URL (None: `$LMFORGE_STORE`, else `./lmforge-store`)."""
    location = default_store_location() if location is None else location
    if is_url(location):
        from lmforge.infra.remote_store import RemoteArtifactStore

        return RemoteArtifactStore(str(location))
    return ArtifactStore(local_path_of(location))


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


class ArtifactStore:
    """A store on a local or mounted shared filesystem (a Ray cluster needs the latter).

    Publishing relies on an atomic directory rename; URL stores (RemoteArtifactStore) upload the
    manifest last instead (the manifest is the visibility marker either way).

    `location` is where the store is (here the absolute path); `root` is always a local directory
    (here the store itself), holding tmp/, locks/, work/ and runs/.
    """

    is_remote = False

    def __init__(self, root: str | Path) -> None:
        if is_url(root):
            raise ConfigError(f"store: {root!r} is a URL; open it with infra.store.open_store")
        self.root = local_path_of(root).expanduser().resolve()
        self.location = str(self.root)
        for sub in ("artifacts", "recipes", "runs", "tmp", "work", LOCKS_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def lock_path(self, kind: str, name: str) -> Path:
        """`<store>/locks/<kind>-<name>.lock`; kind is recipe, staging or run."""
        return self.root / LOCKS_DIR / f"{kind}-{name}.lock"

    def recipe_lock(self, recipe_key: str, run_id: str | None = None) -> StoreLock:
        """The lock a stage holds while it looks up, computes or publishes this recipe."""
        return StoreLock(self.lock_path("recipe", recipe_key[:RECIPE_SLOT_CHARS]), run_id)

    # -- writing -----------------------------------------------------------------------------------

    @contextmanager
    def staging(self, run_id: str | None = None) -> Iterator[Path]:
        """A fresh directory on the store's filesystem to write an artifact's files into.

        Removed afterwards unless it was published (publishing moves it). Its staging lock is held
        throughout, taken before the directory exists, so `gc` never finds it unowned while in use.
        """
        name = uuid.uuid4().hex
        lock = StoreLock(self.lock_path("staging", name), run_id)
        lock.acquire()  # a fresh name: never waits
        path = self.root / "tmp" / name
        try:
            (path / DATA_DIR).mkdir(parents=True)
            yield path / DATA_DIR
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with suppress(FileNotFoundError):
                lock.path.unlink()  # while still held, see locks.hold_if_free
            lock.release()

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
        write_json_atomic(staged / FAST_HASH_RECORD, fast_hash_record(data_dir, files))
        write_json_atomic(staged / MANIFEST, manifest)
        existing = self._commit(staged, artifact_id)
        # The stage runner holds the recipe's lock here, so the pointer has one writer at a time.
        self._write_recipe_pointer(recipe_key, artifact_id)
        return existing

    def _commit(self, staged: Path, artifact_id: str) -> dict[str, Any]:
        """Make a staged artifact visible; the stored record (the existing one when it was already there)."""
        self._move_into_place(staged, artifact_id)
        # Same content from the same recipe may already have been stored: its record is kept.
        return self.get(artifact_id)

    def _write_recipe_pointer(self, recipe_key: str, artifact_id: str) -> None:
        write_json_atomic(self.root / "recipes" / f"{recipe_key}.json", {"artifact_id": artifact_id})

    def _move_into_place(self, staged: Path, artifact_id: str) -> None:
        """Rename a staged artifact to its id, unless an intact artifact already has that id."""
        final = self.artifact_dir(artifact_id)
        if (final / MANIFEST).exists():
            problems = self._problems_of(artifact_id)
            if not problems:
                return
            # Never repair in place: a reader may be inside the damaged copy; move it aside whole.
            self.quarantine(artifact_id, problems)
        try:
            os.rename(staged, final)
        except OSError as err:
            # Lost a race with another process publishing the same content from the same recipe.
            if not (final / MANIFEST).exists():
                raise ArtifactError(
                    f"cannot publish {artifact_id}: {final} exists without a manifest ({err})"
                ) from None

    def quarantine(self, artifact_id: str, problems: list[str]) -> Path | str | None:
        """Move a damaged artifact to quarantine/ in one rename, so a recomputed one can take its id."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        target = self.root / "quarantine" / f"{artifact_id}-{stamp}-{uuid.uuid4().hex[:6]}"
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(self.artifact_dir(artifact_id), target)
        except FileNotFoundError:
            return None  # another process moved it aside first
        write_json_atomic(target / "quarantine.json", {"moved_at": utc_now(), "problems": problems})
        log.warning("%s is damaged (%s); moved aside to %s", artifact_id, problems[0], target)
        return target

    def work_dir(self, recipe_key: str) -> Path:
        """Scratch space for one recipe; kept when a stage crashes so that its re-run can resume.

        Use it only while holding `recipe_lock(recipe_key)`: the lock is what makes it one attempt's.
        """
        path = self.root / "work" / recipe_key[:RECIPE_SLOT_CHARS]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def work_area(self, recipe_key: str) -> str:
        """Where a stage's resumable scratch lives that every node sees (Ray Train checkpoints).

        A local store: its work directory. Same locking rule as `work_dir`.
        """
        return str(self.work_dir(recipe_key))

    def remove_work_area(self, recipe_key: str) -> None:
        shutil.rmtree(self.root / "work" / recipe_key[:RECIPE_SLOT_CHARS], ignore_errors=True)

    def arrow_filesystem(self) -> Any:
        """The pyarrow filesystem holding `work_area` paths; None: the local filesystem."""
        return None

    def arrow_path(self, uri: str) -> str:
        """`uri` (from `work_area`) as the path `arrow_filesystem` expects."""
        return uri

    # -- reading -----------------------------------------------------------------------------------

    def get(self, artifact_id: str) -> dict[str, Any]:
        manifest_path = self.root / "artifacts" / artifact_id / MANIFEST
        try:
            return json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"no artifact {artifact_id!r} in store {self.location}") from None
        except json.JSONDecodeError as err:
            raise ArtifactError(f"manifest of {artifact_id} is corrupt ({manifest_path}): {err}") from None

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / artifact_id

    def data_path(self, artifact_id: str) -> Path:
        return self.artifact_dir(artifact_id) / DATA_DIR

    def data_location(self, artifact_id: str) -> str:
        """Where the artifact's data lives in the store, downloading nothing: a path here, a URL for URL stores."""
        return str(self.data_path(artifact_id))

    def local_files(self, artifact_id: str, prefix: str = "") -> Path:
        """A local data directory holding (at least) the artifact's files whose path starts with `prefix`."""
        return self.data_path(artifact_id)

    def find_by_recipe(self, recipe_key: str) -> dict[str, Any] | None:
        pointer = self.root / "recipes" / f"{recipe_key}.json"
        try:
            artifact_id = json.loads(pointer.read_text())["artifact_id"]
            return self.get(artifact_id)
        except (OSError, ValueError, KeyError, ArtifactError):
            return None  # no pointer, or one to an artifact that is gone: compute afresh

    def check_reusable(self, manifest: dict[str, Any]) -> list[str]:
        """Problems that forbid reusing an artifact (empty = reuse it); see integrity for the cost.

        Every file is read: by size and xxh3-64 where the fast-hash record has it, else by sha256
        (and the record is then written, so the next check is fast).
        """
        artifact_dir = self.artifact_dir(manifest["id"])
        fast = read_fast_hashes(artifact_dir / FAST_HASH_RECORD)
        problems = file_problems(artifact_dir / DATA_DIR, manifest["files"], fast)
        problems += content_id_problems(manifest, artifact_dir / MANIFEST)
        if not problems and any(record["path"] not in fast for record in manifest["files"]):
            write_json_atomic(
                artifact_dir / FAST_HASH_RECORD, fast_hash_record(artifact_dir / DATA_DIR, manifest["files"])
            )
        return problems

    def _problems_of(self, artifact_id: str) -> list[str]:
        try:
            return self.check_reusable(self.get(artifact_id))
        except ArtifactError as err:
            return [str(err)]

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
        problems = file_problems(self.data_path(artifact_id), manifest["files"])
        problems += content_id_problems(manifest, self.artifact_dir(artifact_id) / MANIFEST)
        return problems + external_problems(manifest)

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

    def run_records(self) -> list[tuple[str, bytes | None, float]]:
        """(run id, run.json bytes or None if unreadable, last modified) of every run in the store."""
        records: list[tuple[str, bytes | None, float]] = []
        for path in sorted(self.root.glob("runs/*/run.json")):
            try:
                records.append((path.parent.name, path.read_bytes(), path.stat().st_mtime))
            except OSError:
                records.append((path.parent.name, None, 0.0))
        return records


def external_problems(manifest: dict[str, Any], missing_ok: bool = False) -> list[str]:
    """One problem per raw input file (recorded by path) that is missing or changed.

    `missing_ok`: an input that is not on this machine is not checked (an object store is read from
    machines other than the one that read the raw files), only logged.
    """
    problems = []
    for record in manifest.get("external_files", []):
        if record["path"] is None:
            continue
        path = Path(record["path"])
        if not path.is_file() and missing_ok:
            log.warning("%s: input file %s is not on this machine; not checked", manifest["id"], path)
        elif not path.is_file():
            problems.append(f"missing input file: {path}")
        elif sha256_file(path) != record["sha256"]:
            problems.append(f"changed input file: {path} (expected sha256 {record['sha256']})")
    return problems
