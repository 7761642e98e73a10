"""An artifact store at a URL (`s3://bucket/prefix`, `gs://...`, `memory://...`: any fsspec filesystem).

The store's layout there is a local store's, except for where an artifact's files live:

    artifacts/<artifact_id>/attempts/<a>/data/...       the artifact's files, one folder per publish attempt
    artifacts/<artifact_id>/attempts/<a>/fasthash.json  size + xxh3-64 per file
    artifacts/<artifact_id>/manifest.json   uploaded LAST, names its attempt (`remote_folder`):
                                            no manifest, no artifact
    recipes/<recipe_key>.json               recipe -> artifact id
    runs/<run_id>/run.json                  mirror of each run record
    work/<recipe slot>/                     resumable scratch every node sees (Ray Train checkpoints)
    quarantine/<artifact_id>-<when>/        damaged artifacts moved aside

and `root` is this node's cache, `${LMFORGE_CACHE_DIR:-~/.cache/lmforge}/stores/<sha256(url)[:16]>/`:
tmp/ (staging, downloads in flight), locks/, work/ (local scratch), runs/ (logs) and
artifacts/<artifact_id>/data/ (cached copies of the files this node has read or published).

Consistency. The kernel locks under locks/ coordinate runs on this machine only. Across machines the
store stays safe by three rules: content addressing (an id names its content, so two publishers of
one id upload the same bytes, telemetry aside), the manifest uploaded last (a crash mid-upload leaves
files no reader looks at; the next publish overwrites them), and existing-manifest-wins (a publisher
that finds a manifest uploads nothing and returns it; the manifest itself is created only if absent,
atomically where the filesystem supports it, as S3's conditional put does). Each attempt uploads into
its own folder, so two machines publishing one id at the same instant never overwrite each other's
files (their telemetry differs): the winner's manifest names its folder, the loser removes its own.
A crashed attempt leaves a folder no manifest names (never read; not collected yet).

Readers fetch only what they ask for (`local_files(id, prefix)`): each file is downloaded to a
temporary name, checked against the manifest's sha256 and renamed into place, so a partial or
corrupt download is never visible and the processes of one node share the cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

from lmforge.core.errors import ArtifactError
from lmforge.core.logs import get_logger
from lmforge.infra.artifact_files import sha256_file
from lmforge.infra.integrity import FAST_HASH_RECORD, content_id_problems, fast_hash
from lmforge.infra.locks import LOCKS_DIR
from lmforge.infra.remote_fs import arrow_filesystem, cache_root, check_location
from lmforge.infra.store import (
    DATA_DIR,
    MANIFEST,
    RECIPE_SLOT_CHARS,
    ArtifactStore,
    external_problems,
    utc_now,
)

log = get_logger(__name__)


# Each publish attempt uploads into artifacts/<id>/attempts/<random>/ (data/, fasthash.json); the
# manifest names its attempt's folder under this key.
ATTEMPTS_DIR = "attempts"
REMOTE_FOLDER_KEY = "remote_folder"


class RemoteArtifactStore(ArtifactStore):
    """A store at a URL with a local cache; see the module docstring for what is where."""

    is_remote = True

    def __init__(self, url: str) -> None:
        self.fs, self._base = check_location(url)  # ConfigError before any work
        self.location = url.rstrip("/")
        self.root = cache_root(self.location)
        for sub in ("artifacts", "runs", "tmp", "work", LOCKS_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._manifests: dict[str, dict[str, Any]] = {}  # artifacts are immutable

    def _remote(self, *parts: str) -> str:
        """A path on `self.fs` (no scheme)."""
        return "/".join([self._base, *parts])

    def _url(self, *parts: str) -> str:
        """The same, as a URL for messages."""
        return "/".join([self.location, *parts])

    def _as_url(self, path: str) -> str:
        """A path from `_remote` as a URL."""
        return "/".join([self.location, path[len(self._base) :].lstrip("/")])

    # -- writing -----------------------------------------------------------------------------------

    def _commit(self, staged: Path, artifact_id: str) -> dict[str, Any]:
        """Upload data files and fasthash.json into this attempt's folder, then the manifest naming
        that folder; an existing manifest wins and this attempt's folder is removed."""
        manifest_path = self._remote("artifacts", artifact_id, MANIFEST)
        if self._exists(manifest_path):
            return self.get(artifact_id)
        # One folder per attempt: two machines publishing one id at once never write the same file
        # (their telemetry differs), so the winner's files stay exactly as its manifest lists them.
        attempt = f"{ATTEMPTS_DIR}/{uuid.uuid4().hex[:16]}"
        data_dir = staged / DATA_DIR
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(data_dir).as_posix()
            self.fs.put_file(str(path), self._remote("artifacts", artifact_id, attempt, DATA_DIR, relative))
        self.fs.put_file(
            str(staged / FAST_HASH_RECORD), self._remote("artifacts", artifact_id, attempt, FAST_HASH_RECORD)
        )
        manifest = json.loads((staged / MANIFEST).read_text())
        manifest[REMOTE_FOLDER_KEY] = attempt
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        try:
            self.fs.put_file(str(staged / MANIFEST), manifest_path, mode="create")
        except FileExistsError:
            log.info("%s was published by another run meanwhile; keeping its record", artifact_id)
            with suppress(FileNotFoundError):
                self.fs.rm(self._remote("artifacts", artifact_id, attempt), recursive=True)
        else:
            self._keep_as_cache(staged, artifact_id)
        return self.get(artifact_id)

    def _folder(self, artifact_id: str) -> str:
        """The artifact's folder of files under artifacts/<id>/ (the attempt its manifest names)."""
        return str(self.get(artifact_id).get(REMOTE_FOLDER_KEY) or ".").strip("/")

    def _files(self, artifact_id: str, *parts: str) -> str:
        """A path on `self.fs` below the artifact's file folder (`data/...`, `fasthash.json`)."""
        folder = self._folder(artifact_id)
        return self._remote("artifacts", artifact_id, *([] if folder == "." else [folder]), *parts)

    def _keep_as_cache(self, staged: Path, artifact_id: str) -> None:
        """The staged files become this node's cached copy: the publisher need not download them."""
        final = self.artifact_dir(artifact_id)
        self._drop_cache(artifact_id)
        final.mkdir(parents=True, exist_ok=True)
        with suppress(OSError):  # another process of this node cached it first: its copy serves
            os.rename(staged / DATA_DIR, final / DATA_DIR)

    def _drop_cache(self, artifact_id: str) -> None:
        cached = self.artifact_dir(artifact_id)
        if cached.exists():
            aside = self.root / "tmp" / f"dropped-{uuid.uuid4().hex}"
            with suppress(FileNotFoundError):
                os.rename(cached, aside)  # one step, so no reader sees a half-removed copy
            shutil.rmtree(aside, ignore_errors=True)

    def _write_recipe_pointer(self, recipe_key: str, artifact_id: str) -> None:
        pointer = json.dumps({"artifact_id": artifact_id}).encode()
        self.fs.pipe_file(self._remote("recipes", f"{recipe_key}.json"), pointer)

    def quarantine(self, artifact_id: str, problems: list[str]) -> str | None:
        """Move the remote artifact to quarantine/: the manifest first (then it is invisible), then the rest."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{artifact_id}-{stamp}-{uuid.uuid4().hex[:6]}"
        source, target = self._remote("artifacts", artifact_id), self._remote("quarantine", name)
        self._manifests.pop(artifact_id, None)
        self._drop_cache(artifact_id)
        try:
            self.fs.copy(f"{source}/{MANIFEST}", f"{target}/{MANIFEST}")
            self.fs.rm_file(f"{source}/{MANIFEST}")
        except FileNotFoundError:
            return None  # another process moved it aside first
        for relative in self._list_files(source):
            with suppress(FileNotFoundError):
                self.fs.mv(f"{source}/{relative}", f"{target}/{relative}")
        record = {"moved_at": utc_now(), "problems": problems}
        self.fs.pipe_file(f"{target}/quarantine.json", json.dumps(record, indent=2).encode())
        log.warning(
            "%s is damaged (%s); moved aside to %s", artifact_id, problems[0], self._url("quarantine", name)
        )
        return self._url("quarantine", name)

    def work_area(self, recipe_key: str) -> str:
        """`<url>/work/<slot>`: resumable scratch that survives a crash and every node sees."""
        return self._url("work", recipe_key[:RECIPE_SLOT_CHARS])

    def remove_work_area(self, recipe_key: str) -> None:
        path = self._remote("work", recipe_key[:RECIPE_SLOT_CHARS])
        self.fs.invalidate_cache(path)
        with suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def arrow_filesystem(self) -> Any:
        return arrow_filesystem(self.fs)

    def arrow_path(self, uri: str) -> str:
        return str(self.fs._strip_protocol(uri))

    # -- reading -----------------------------------------------------------------------------------

    def get(self, artifact_id: str) -> dict[str, Any]:
        if artifact_id in self._manifests:
            return self._manifests[artifact_id]
        path = self._remote("artifacts", artifact_id, MANIFEST)
        try:
            manifest = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            raise ArtifactError(f"no artifact {artifact_id!r} in store {self.location}") from None
        except ValueError as err:
            url = self._url("artifacts", artifact_id, MANIFEST)
            raise ArtifactError(f"manifest of {artifact_id} is corrupt ({url}): {err}") from None
        self._manifests[artifact_id] = manifest
        return manifest

    def data_path(self, artifact_id: str) -> Path:
        """Every file of the artifact, downloaded as needed (prefer `local_files` with a prefix)."""
        return self.local_files(artifact_id)

    def data_location(self, artifact_id: str) -> str:
        """`<url>/artifacts/<id>/data`, for readers that stream from the store (Ray Data)."""
        self.get(artifact_id)  # an artifact that does not exist is an error here, as for local stores
        return self._as_url(self._files(artifact_id, DATA_DIR))

    def local_files(self, artifact_id: str, prefix: str = "") -> Path:
        """The cached data directory, holding every file whose path starts with `prefix`."""
        manifest = self.get(artifact_id)
        data_dir = self.artifact_dir(artifact_id) / DATA_DIR
        for record in manifest["files"]:
            if record["path"].startswith(prefix) and not (data_dir / record["path"]).is_file():
                self._download(artifact_id, record, data_dir / record["path"])
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir

    def _download(self, artifact_id: str, record: dict[str, Any], target: Path) -> None:
        """One file to a temporary name, checked against its sha256, then renamed into place."""
        url = self._as_url(self._files(artifact_id, DATA_DIR, record["path"]))
        partial = self.root / "tmp" / f"download-{uuid.uuid4().hex}"
        try:
            try:
                self.fs.get_file(self._files(artifact_id, DATA_DIR, record["path"]), str(partial))
            except FileNotFoundError:
                raise ArtifactError(f"missing file: {url}; run `lmforge verify {artifact_id}`") from None
            if partial.stat().st_size != record["size"] or sha256_file(partial) != record["sha256"]:
                raise ArtifactError(
                    f"changed file: {url} (expected sha256 {record['sha256']}); run `lmforge verify {artifact_id}`"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def find_by_recipe(self, recipe_key: str) -> dict[str, Any] | None:
        try:
            pointer = json.loads(self.fs.cat_file(self._remote("recipes", f"{recipe_key}.json")))
            return self.get(pointer["artifact_id"])
        except (OSError, ValueError, KeyError, ArtifactError):
            return None  # no pointer, or one to an artifact that is gone: compute afresh

    def manifests(self, kind: str | None = None) -> list[dict[str, Any]]:
        folder = self._remote("artifacts")
        self.fs.invalidate_cache(folder)
        try:
            entries = sorted(str(entry).rstrip("/") for entry in self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return []
        paths = [f"{entry}/{MANIFEST}" for entry in entries]
        # Folders without a manifest are uploads in flight (or crashed): not artifacts.
        contents = self.fs.cat(paths, on_error="omit") if paths else {}
        manifests = []
        for path in paths:
            raw = contents.get(path) or contents.get(self.fs._strip_protocol(path))
            if raw is None:
                continue
            manifest = json.loads(raw)
            self._manifests.setdefault(manifest["id"], manifest)
            if kind is None or manifest["kind"] == kind:
                manifests.append(manifest)
        return manifests

    def _exists(self, path: str) -> bool:
        self.fs.invalidate_cache(path)  # another node may have written it since we last looked
        return bool(self.fs.exists(path))

    def _list_files(self, folder: str) -> dict[str, int]:
        """Relative path -> size of every file below a remote folder (one listing, no reads)."""
        self.fs.invalidate_cache(folder)
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        folder = str(self.fs._strip_protocol(folder)).rstrip("/") + "/"
        return {
            str(name).removeprefix(folder): int(info["size"])
            for name, info in found.items()
            if info.get("type") == "file"
        }

    def _remote_problems(self, manifest: dict[str, Any], check_hashes: bool) -> list[str]:
        """Missing, changed (size; sha256 when `check_hashes`) and unexpected remote files."""
        artifact_id = manifest["id"]
        listed = self._list_files(self._files(artifact_id, DATA_DIR))
        problems = []
        for record in manifest["files"]:
            url = self._as_url(self._files(artifact_id, DATA_DIR, record["path"]))
            size = listed.pop(record["path"], None)
            if size is None:
                problems.append(f"missing file: {url}")
            elif size != record["size"]:
                problems.append(f"changed file: {url} (expected {record['size']} bytes)")
            elif check_hashes and self._sha256(artifact_id, record["path"]) != record["sha256"]:
                problems.append(f"changed file: {url} (expected sha256 {record['sha256']})")
        problems += [
            f"unexpected file: {self._as_url(self._files(artifact_id, DATA_DIR, path))}"
            for path in sorted(listed)
        ]
        # content_id_problems only prints the manifest's location: a URL names it here.
        manifest_url = cast(Path, self._url("artifacts", artifact_id, MANIFEST))
        return problems + content_id_problems(manifest, manifest_url)

    def _sha256(self, artifact_id: str, relative: str) -> str:
        """sha256 of a remote file, streamed (nothing is written locally)."""
        digest = hashlib.sha256()
        with self.fs.open(self._files(artifact_id, DATA_DIR, relative), "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()

    def verify(self, artifact_id: str) -> list[str]:
        """Stream and re-hash every remote file; one problem per changed, missing or unexpected file."""
        manifest = self.get(artifact_id)
        return self._remote_problems(manifest, check_hashes=True) + external_problems(
            manifest, missing_ok=True
        )

    def check_reusable(self, manifest: dict[str, Any]) -> list[str]:
        """Remote files by listing (set and sizes) and the content id; cached copies by fast hash.

        A damaged cached file is this node's problem, not the store's: it is deleted, and
        downloaded again when next needed.
        """
        problems = self._remote_problems(manifest, check_hashes=False)
        if not problems:
            self._clean_cached_copy(manifest)
        return problems

    def _clean_cached_copy(self, manifest: dict[str, Any]) -> None:
        data_dir = self.artifact_dir(manifest["id"]) / DATA_DIR
        if not data_dir.is_dir():
            return
        fast = self._fast_hashes(manifest["id"])
        records = {record["path"]: record for record in manifest["files"]}
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
            record = records.get(path.relative_to(data_dir).as_posix())
            if record is None or not cached_file_intact(path, record, fast.get(record["path"])):
                log.warning("cached copy %s is damaged or stale; it will be downloaded again", path)
                path.unlink(missing_ok=True)

    def _fast_hashes(self, artifact_id: str) -> dict[str, list[Any]]:
        try:
            value = json.loads(self.fs.cat_file(self._files(artifact_id, FAST_HASH_RECORD)))
        except (OSError, ValueError):
            return {}  # every cached file is then checked by sha256
        return value if isinstance(value, dict) else {}

    # -- runs --------------------------------------------------------------------------------------

    def write_run_record(self, run_id: str, record: dict[str, Any]) -> Path:
        """Written here (beside the run's logs) and mirrored to `<url>/runs/<run_id>/run.json`."""
        path = super().write_run_record(run_id, record)
        self.fs.pipe_file(self._remote("runs", run_id, "run.json"), path.read_bytes())
        return path

    def run_records(self) -> list[tuple[str, bytes | None, float]]:
        folder = self._remote("runs")
        self.fs.invalidate_cache(folder)
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return []
        records = []
        for name, info in sorted(found.items()):
            parts = str(name).rsplit("/", 2)
            if len(parts) < 3 or parts[2] != "run.json":
                continue
            try:
                raw: bytes | None = self.fs.cat_file(name)
            except OSError:
                raw = None
            records.append((parts[1], raw, modified_time(self.fs, name, info)))
        return records


def cached_file_intact(path: Path, record: dict[str, Any], fast: list[Any] | None) -> bool:
    """Size, then xxh3-64 when the fast-hash record has the file, else sha256."""
    if path.stat().st_size != record["size"]:
        return False
    if fast is not None and fast[0] == record["size"]:
        return fast_hash(path) == fast[1]
    return sha256_file(path) == record["sha256"]


def modified_time(fs: Any, name: str, info: dict[str, Any]) -> float:
    """A remote file's last modification as a POSIX time (0.0 when the filesystem does not say)."""
    for key in ("LastModified", "mtime", "updated", "created", "last_modified"):
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    try:
        return float(fs.modified(name).timestamp())
    except (NotImplementedError, OSError, AttributeError):
        return 0.0
