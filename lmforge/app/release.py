"""Release bundles: a run's model with everything needed to audit and rebuild it (`lmforge release`).

Layout of a bundle directory:

    model/                 the pre-trained model and tokenizer in Hugging Face format (safetensors),
                           with the model card (README.md, the Hub's YAML metadata) and its loss curve
    report/                the run's report (report.md, report.html, loss_curve.png)
    code/source.tar.gz     the exact source tree the run used (also when it was not committed)
    release.json           every artifact back to the raw inputs, the raw inputs' hashes, the code,
                           the package lock, Python and hardware, and the sha256 of every file above
    release.json.sig       detached Ed25519 signature of release.json (with --sign)
    release.pub            the signer's public key (with --sign)

A bundle is written into a temporary directory beside its destination and renamed into place, so
a crash never leaves a half-written bundle under the destination's name.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmforge.core.errors import ConfigError, LmforgeError
from lmforge.infra.artifact_files import TELEMETRY_DIR, sha256_file
from lmforge.infra.lineage import REPO_ROOT, SOURCE_PACKAGES, environment, sha256_json, source_files
from lmforge.infra.store import ArtifactStore, utc_now
from lmforge.training.artifact import SPEED_FILE

RELEASE_SCHEMA = "lmforge-release/1"
REQUIRED_KEYS = (
    "release_id", "run", "stages", "model", "artifacts", "raw_inputs", "code", "environment", "files",
)  # fmt: skip
RELEASE_FILE = "release.json"
SIGNATURE_FILE = "release.json.sig"
PUBLIC_KEY_FILE = "release.pub"
MODEL_DIR = "model"
REPORT_DIR = "report"
CODE_ARCHIVE = "code/source.tar.gz"
# Files of a bundle that release.json cannot list by hash: itself and what signs it.
UNLISTED = (RELEASE_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE)
# What the Hub calls each objective's task, and the class that reloads its export.
PIPELINE_TAGS = {
    "clm": "text-generation",
    "mlm": "fill-mask",
    "mlm_nsp": "fill-mask",
    "mlm_sop": "fill-mask",
    "span": "text2text-generation",
}
# Tolerances a release declares for stages computed on GPUs (kernels there are not bitwise
# deterministic); stages computed on CPUs must reproduce bit for bit.
GPU_TOLERANCES = {"weights_max_abs_diff": 1e-2, "metrics_rel_diff": 2e-2}
# Artifacts whose computation may run on a GPU; the pre-training telemetry names its device.
GPU_KINDS = ("model", "finetune", "evaluation")


class ReleaseError(LmforgeError):
    """A run that cannot be released as it is, or a bundle that does not verify."""

    exit_code = 1


# -- reading the run --------------------------------------------------------------------------------


def load_run(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """run.json of a completed run with a pre-trained model, or ReleaseError saying what is missing."""
    records = {name: raw for name, raw, _ in store.run_records()}
    if run_id not in records:
        known = ", ".join(sorted(records)[-5:]) or "none"
        raise ConfigError(f"release: no run {run_id!r} in store {store.location} (latest runs: {known})")
    raw = records[run_id]
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ReleaseError(f"release: run.json of {run_id} in {store.location} is unreadable")
    if record.get("status") != "completed":
        raise ReleaseError(
            f"release: run {run_id} is {record.get('status')!r}; only a completed run is released"
        )
    if "pretrain" not in (record.get("stages") or {}):
        raise ReleaseError(
            f"release: run {run_id} has no pretrain stage (a --stage run?); nothing to release"
        )
    if record.get("stage"):
        raise ReleaseError(
            f"release: run {run_id} ran only --stage {record['stage']}; release a run of every stage "
            "(stored stages are reused)"
        )
    if not record.get("code_files"):
        raise ReleaseError(
            f"release: run {run_id} predates source recording (run.json has no code_files); re-run its "
            "config with this lmforge (stored stages are reused) and release that run"
        )
    return record


def artifact_closure(store: ArtifactStore, roots: list[str]) -> list[dict[str, Any]]:
    """Manifests of `roots` and all their ancestors, parents before children (ties by id)."""
    manifests: dict[str, dict[str, Any]] = {}
    pending = list(roots)
    while pending:
        artifact_id = pending.pop()
        if artifact_id not in manifests:
            manifests[artifact_id] = store.get(artifact_id)
            pending.extend(manifests[artifact_id]["parents"])
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()
    while len(ordered) < len(manifests):
        ready = sorted(
            artifact_id
            for artifact_id, manifest in manifests.items()
            if artifact_id not in placed and all(parent in placed for parent in manifest["parents"])
        )
        ordered += [manifests[artifact_id] for artifact_id in ready]
        placed.update(ready)
    return ordered


def released_stages(record: dict[str, Any]) -> dict[str, str]:
    """stage -> artifact id of the run's stages; the report describes the run itself and is left out."""
    return {name: stage["artifact_id"] for name, stage in record["stages"].items() if name != "report"}


# -- release.json ---------------------------------------------------------------------------------


def artifact_entry(manifest: dict[str, Any], environments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What release.json says of one artifact; its environment is stored once per distinct value."""
    env = manifest.get("environment") or {}
    env_key = sha256_json(env)[:16]
    environments.setdefault(env_key, env)
    return {
        "id": manifest["id"],
        "kind": manifest["kind"],
        "stage": manifest["stage"],
        "content_id": manifest["content_id"],
        "recipe_key": manifest["recipe_key"],
        "parents": manifest["parents"],
        "config": manifest["config"],
        "seed": manifest["seed"],
        "code": manifest["code"],
        "environment": env_key,
        "run_id": manifest.get("run_id"),
        "created_at": manifest.get("created_at"),
        "timings": manifest.get("timings") or {},
        "metrics": manifest.get("metrics") or {},
        "files": manifest["files"],
        "external_files": [
            {key: record.get(key) for key in ("uri", "sha256", "size")}
            for record in manifest.get("external_files", [])
        ],
    }


def raw_inputs(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every raw input (file or hub data set pinned to a revision), with the artifacts that read it."""
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    for manifest in manifests:
        for record in manifest.get("external_files", []):
            key = (record["uri"], record["sha256"])
            entry = found.setdefault(
                key,
                {
                    "uri": record["uri"],
                    "sha256": record["sha256"],
                    "size": record["size"],
                    # A hub data set is pinned by the revision in its URI; its bytes are not hashed here.
                    "kind": "file" if record["sha256"] else "hub",
                    "read_by": [],
                },
            )
            entry["read_by"].append(manifest["id"])
    return sorted(found.values(), key=lambda entry: entry["uri"])


def hardware(model_manifest: dict[str, Any]) -> dict[str, Any]:
    """The machine that trained the model, as its manifest records it (CPU model and flags, memory,
    accelerators); fields older manifests lack are read from this machine and marked so."""
    recorded = model_manifest.get("environment") or {}
    keys = (
        "machine",
        "cpu_count",
        "cpu_model",
        "cpu_flags",
        "memory_bytes",
        "cuda_available",
        "cuda_devices",
    )
    info = {key: recorded[key] for key in keys if key in recorded}
    missing = [key for key in keys if key not in info]
    if missing:
        here = environment()  # includes cpu_info()
        info.update({key: here.get(key) for key in missing})
        info["read_at_release"] = missing
    return info


def training_device(store: ArtifactStore, manifest: dict[str, Any]) -> str:
    """ "cpu" or the GPU's name a model artifact was trained on (its telemetry's start record); for
    other artifacts, "cuda" when the process that made them saw one, else "cpu"."""
    if manifest["kind"] == "model":
        try:
            speed = store.local_files(manifest["id"], SPEED_FILE) / SPEED_FILE
            for line in speed.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "start" and event.get("device_name"):
                    return str(event["device_name"])
        except (OSError, ValueError, LmforgeError):
            pass
    return "cuda" if (manifest.get("environment") or {}).get("cuda_available") else "cpu"


def reproducibility(store: ArtifactStore, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Per artifact id: whether a rebuild must be bit-identical (computed on CPUs) or may differ
    within tolerances (GPU kernels are not bitwise deterministic)."""
    artifacts = {}
    for manifest in manifests:
        device = training_device(store, manifest) if manifest["kind"] in GPU_KINDS else "cpu"
        artifacts[manifest["id"]] = (
            {"deterministic": True, "device": "cpu", "tolerances": None}
            if device == "cpu"
            else {"deterministic": False, "device": device, "tolerances": dict(GPU_TOLERANCES)}
        )
    return {"artifacts": artifacts}


def bundle_files(bundle: Path) -> list[dict[str, Any]]:
    """path, sha256 and size of every file in the bundle that release.json covers, sorted by path."""
    records = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_file() and relative not in UNLISTED:
            records.append({"path": relative, "sha256": sha256_file(path), "size": path.stat().st_size})
    return records


# -- the source archive ----------------------------------------------------------------------------


def tracked_support_files(root: Path = REPO_ROOT) -> list[str]:
    """The checkout's committed files outside the package folders (pyproject.toml, the lock, configs,
    docs, tests) that exist in the work tree; none when this is no git checkout."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-c", "-z"], capture_output=True, check=True, timeout=30
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return []
    names = {name for name in listed.split("\0") if name and name.split("/")[0] not in SOURCE_PACKAGES}
    return sorted(name for name in names if (root / name).is_file() and not (root / name).is_symlink())


def write_source_archive(dest: Path, code_files: dict[str, str], root: Path = REPO_ROOT) -> dict[str, Any]:
    """A byte-reproducible .tar.gz of the code a run executed: every lmforge package file, checked
    against `code_files` (the run's record) and stored under lmforge/ as a real file (so
    `PYTHONPATH=<extracted>` runs it, as a Ray Job's copy does), plus the checkout's committed files
    outside the package (pyproject.toml, requirements, configs) as they are now. Untracked files
    outside the package (scratch files, stores, bundles) never go in."""
    import lmforge

    package = Path(lmforge.__file__).parent
    members: list[tuple[str, Path]] = []
    for relative, digest in sorted(code_files.items()):
        path = package / relative
        if not path.is_file() or sha256_file(path) != digest:
            raise ReleaseError(
                f"release: {path} does not hash as the run recorded; it changed while releasing"
            )
        members.append((f"lmforge/{relative}", path))
    members += [(name, root / name) for name in tracked_support_files(root)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for arcname, path in sorted(members):
            info = tarfile.TarInfo(arcname)
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as packed:
        packed.write(buffer.getvalue())
    return {"archive": CODE_ARCHIVE, "num_files": len(members)}


def check_source_matches(record: dict[str, Any]) -> None:
    """ReleaseError unless this installation's package files hash as the run recorded (so the
    archive written now is the code the run executed), naming the files that differ."""
    recorded: dict[str, str] = record["code_files"]
    current = source_files()
    differences = describe_file_differences(recorded, current)
    if differences:
        shown = "; ".join(differences[:10]) + (
            f"; and {len(differences) - 10} more" if len(differences) > 10 else ""
        )
        raise ReleaseError(
            f"release: this checkout's lmforge sources differ from those run {record['run_id']} executed "
            f"({shown}); check out commit {record['code'].get('git_commit')} with the same changes, or "
            "re-run the config with this code and release that run"
        )


def describe_file_differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """`changed X`, `missing X` (expected, not here), `added X` (here, not expected), by path."""
    changes = [
        f"changed {path}" for path in sorted(expected) if path in actual and actual[path] != expected[path]
    ]
    changes += [f"missing {path}" for path in sorted(set(expected) - set(actual))]
    changes += [f"added {path}" for path in sorted(set(actual) - set(expected))]
    return changes


# -- the bundle ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseResult:
    path: Path
    release_id: str
    num_artifacts: int
    signed_by: str | None


def build_release(
    store: ArtifactStore, run_id: str, out: Path, sign_key: Path | None = None
) -> ReleaseResult:
    """Write the release bundle of `run_id` to `out` (which must not exist or be empty)."""
    from lmforge.app.model_card import model_card
    from lmforge.infra import signing

    record = load_run(store, run_id)
    key = signing.load_private_key(sign_key) if sign_key is not None else None
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"release: --out {out} exists and is not empty; choose a new directory")
    check_source_matches(record)
    stages = released_stages(record)
    manifests = artifact_closure(store, list(stages.values()))
    for manifest in manifests:
        problems = store.verify(manifest["id"])
        if problems:
            raise ReleaseError(f"release: stored artifact {manifest['id']} does not verify: {problems[0]}")
    model_id = stages["pretrain"]
    model_manifest = next(manifest for manifest in manifests if manifest["id"] == model_id)
    objective = record["config"]["pretrain"]["objective"]

    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        model_dir = staging / MODEL_DIR
        shutil.copytree(store.local_files(model_id, "hf/") / "hf", model_dir)
        report_dir = staging / REPORT_DIR
        if "report" in record["stages"]:
            report_id = record["stages"]["report"]["artifact_id"]
            shutil.copytree(store.local_files(report_id), report_dir)
            if (report_dir / "loss_curve.png").is_file():
                shutil.copy2(report_dir / "loss_curve.png", model_dir / "loss_curve.png")
        code = write_source_archive(staging / CODE_ARCHIVE, record["code_files"])
        environments: dict[str, dict[str, Any]] = {}
        artifacts = [artifact_entry(manifest, environments) for manifest in manifests]
        release: dict[str, Any] = {
            "schema": RELEASE_SCHEMA,
            "created_at": utc_now(),
            "run": {
                key: record.get(key)
                for key in (
                    "run_id",
                    "config_name",
                    "started_at",
                    "finished_at",
                    "wall_seconds",
                    "store",
                    "config",
                )
            },
            "stages": stages,
            "model": {
                "artifact_id": model_id,
                "path": MODEL_DIR,
                "objective": objective,
                "auto_class": auto_model_class(objective),
                "pipeline_tag": PIPELINE_TAGS.get(objective),
            },
            "artifacts": artifacts,
            "raw_inputs": raw_inputs(manifests),
            "code": {**record["code"], **code, "files": record["code_files"]},
            # The run's environment: the pre-trained model's (stages reused from earlier runs keep theirs).
            "environment": model_manifest.get("environment") or {},
            "environments": environments,
            "hardware": hardware(model_manifest),
            "reproducibility": reproducibility(store, manifests),
        }
        card = model_card(release, record)
        (model_dir / "README.md").write_text(card)
        release["files"] = bundle_files(staging)
        release["release_id"] = sha256_json({k: v for k, v in release.items() if k != "created_at"})[:16]
        release_bytes = (json.dumps(release, indent=2, default=str) + "\n").encode()
        (staging / RELEASE_FILE).write_bytes(release_bytes)
        signed_by = None
        if key is not None:
            (staging / SIGNATURE_FILE).write_text(signing.sign(key, release_bytes) + "\n")
            (staging / PUBLIC_KEY_FILE).write_bytes(signing.public_pem(key.public_key()))
            signed_by = signing.key_fingerprint(key.public_key())
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReleaseResult(out, release["release_id"], len(artifacts), signed_by)


def auto_model_class(objective: str) -> str:
    from lmforge.training import get_objective

    return get_objective(objective).auto_model_class


# -- verifying a bundle ----------------------------------------------------------------------------


def release_file(path: Path) -> Path:
    """release.json of a bundle directory, or `path` itself when it names the file."""
    path = Path(path).expanduser()
    return path / RELEASE_FILE if path.is_dir() else path


def read_release_bytes(path: Path) -> bytes:
    try:
        return release_file(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no {RELEASE_FILE} (expected a release bundle directory or its {RELEASE_FILE})"
        ) from None


def parse_release(data: bytes, source: Path) -> dict[str, Any]:
    try:
        release = json.loads(data)
    except ValueError as err:
        raise ReleaseError(f"{source} is not valid JSON: {err}") from None
    if not isinstance(release, dict) or release.get("schema") != RELEASE_SCHEMA:
        raise ReleaseError(f"{source}: not an lmforge release (schema {RELEASE_SCHEMA!r} expected)")
    missing = [key for key in REQUIRED_KEYS if key not in release]
    if missing:
        raise ReleaseError(f"{source}: missing {', '.join(missing)} (not a complete lmforge release)")
    if not re.fullmatch(r"[0-9a-f]{16}", str(release["release_id"])):
        raise ReleaseError(f"{source}: release_id {release['release_id']!r} is not 16 hex digits")
    return release


def load_release(path: Path) -> tuple[Path, dict[str, Any], bytes]:
    """(bundle directory, release.json parsed, its bytes) from a bundle directory or its release.json."""
    data = read_release_bytes(path)
    source = release_file(path)
    return source.parent, parse_release(data, source), data


def verify_release(
    bundle: Path, pubkey: Path | None = None, require_signature: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """Check the signature, then every listed file; raise ReleaseError naming the first mismatch.

    The signature is checked over release.json's bytes before they are parsed, so a changed byte
    anywhere in release.json is reported as such. Returns notes for the user (what was checked, and
    how far the signature proves anything).
    """
    from lmforge.infra import signing

    source = release_file(bundle)
    bundle, data = source.parent, read_release_bytes(bundle)
    notes = []
    signature_path = bundle / SIGNATURE_FILE
    if pubkey is not None:
        try:
            key = signing.load_public_key(Path(pubkey).read_bytes(), str(pubkey))
        except FileNotFoundError:
            raise ConfigError(f"--pubkey {pubkey}: no such file") from None
        key_source = f"--pubkey {pubkey}"
    elif (bundle / PUBLIC_KEY_FILE).is_file():
        key = signing.load_public_key((bundle / PUBLIC_KEY_FILE).read_bytes(), str(bundle / PUBLIC_KEY_FILE))
        key_source = (
            f"the bundled {PUBLIC_KEY_FILE} (proves the bundle is intact, not who signed it: pass --pubkey)"
        )
    else:
        key, key_source = None, ""
    if key is not None:
        if not signature_path.is_file():
            raise ReleaseError(f"{signature_path}: missing; the release is not signed")
        signing.check_signature(key, data, signature_path.read_text(), str(signature_path), str(source))
        notes.append(f"signature: ok, key {signing.key_fingerprint(key)[:16]} from {key_source}")
    elif signature_path.is_file():
        raise ReleaseError(
            f"{signature_path} exists but there is no {PUBLIC_KEY_FILE} and no --pubkey to check it"
        )
    elif require_signature:
        raise ReleaseError(
            f"{bundle}: the release is not signed (no {SIGNATURE_FILE}); pass --allow-unsigned to check "
            "file hashes only"
        )
    else:
        notes.append("signature: none (unsigned release; file hashes only)")
    release = parse_release(data, source)
    listed = {record["path"]: record for record in release.get("files", [])}
    for relative, record in sorted(listed.items()):
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ReleaseError(f"{source}: file path {relative!r} points outside the bundle")
        path = bundle / relative
        if not path.is_file():
            raise ReleaseError(f"{path}: missing (listed in {RELEASE_FILE})")
        if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
            raise ReleaseError(f"{path}: changed (its sha256 differs from the one {RELEASE_FILE} lists)")
    extra = sorted(set(record["path"] for record in bundle_files(bundle)) - set(listed))
    if extra:
        raise ReleaseError(
            f"{bundle / extra[0]}: not listed in {RELEASE_FILE} (added after the release was made)"
        )
    notes.append(f"files: {len(listed)} ok")
    return notes, release


def card_metadata(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card."""
    if not text.startswith("---\n"):
        return {}
    block = text[4:].split("\n---\n", 1)[0]
    return yaml.safe_load(block) or {}


def telemetry_path(path: str) -> bool:
    return path.startswith(f"{TELEMETRY_DIR}/")
