"""What a re-run needs to know: code version, environment, and a fingerprint of the stage's code."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Written by `lmforge submit` into the package copy a Ray Job runs (no git there): git_commit, git_dirty.
STAGED_CODE_VERSION = "code_version.json"


def sha256_json(value: Any) -> str:
    """Hash of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Source trees whose edits make the recorded commit not describe the code that ran.
SOURCE_PACKAGES = ("lmforge", "corpus", "tokenization", "training", "tasks", "infra", "flows")


# Files in the package that are not source: bytecode, and the version note `lmforge submit` writes.
NOT_SOURCE = ("__pycache__",)


@functools.cache
def source_files() -> dict[str, str]:
    """sha256 of every file of the installed lmforge package, by its path inside the package.

    Stage folders are followed through their symlinks, so a checkout, a wheel and the copy a Ray Job
    runs list the same paths. This is the code a run executed, dirty or not: `lmforge release`
    archives a tree only when it hashes as the run recorded, and `lmforge reproduce` names each file
    that differs.
    """
    import lmforge

    root = Path(lmforge.__file__).parent
    files: dict[str, str] = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        # Tool caches (.mypy_cache, .pytest_cache) are not code the run executed.
        dirs[:] = sorted(name for name in dirs if name not in NOT_SOURCE and not name.startswith("."))
        for name in names:
            if name.endswith((".pyc", ".pyo")) or name == STAGED_CODE_VERSION:
                continue
            path = Path(folder) / name
            files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(files.items()))


@functools.cache
def code_version() -> dict[str, Any]:
    """Git commit of the lmforge checkout, whether its sources differ from it (untracked included),
    and `source_sha256`: the digest of every package file as it is (see `source_files`)."""
    return {**_git_version(), "source_sha256": sha256_json(source_files())}


def _git_version() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip()

    from lmforge import __version__

    commit = git("rev-parse", "HEAD")
    if commit is None and (REPO_ROOT / STAGED_CODE_VERSION).is_file():
        # A copy of the package staged by `lmforge submit`: the submitting checkout's version.
        staged = json.loads((REPO_ROOT / STAGED_CODE_VERSION).read_text())
        return {"lmforge_version": __version__, **staged}
    status = git("status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PACKAGES)
    return {
        "lmforge_version": __version__,
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
    }


# The folder name pip and setuptools keep their bundled copies of other distributions in.
VENDORED_DIR = "_vendor"


def installed_packages() -> dict[str, str]:
    """Every installed distribution's version, as an import would find it, by lower-case name.

    The first copy on sys.path wins, as for imports. Copies vendored inside another package are left
    out: importing setuptools appends `setuptools/_vendor` to sys.path, whose bundled
    `platformdirs`, `jaraco.*`, ... would otherwise appear (or shadow the installed version) in one
    process and not in another, so a release made after anything imported setuptools would not match
    the same environment checked by a fresh `lmforge reproduce`.
    """
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or VENDORED_DIR in Path(str(dist.locate_file(""))).parts:
            continue
        packages.setdefault(name.lower(), dist.version)
    return dict(sorted(packages.items()))


@functools.cache
def environment() -> dict[str, Any]:
    """Interpreter, platform, accelerator and every installed package version."""
    packages = installed_packages()
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        **cpu_info(),
        "packages": packages,
    }
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


# CPU flags that decide numerics or speed (bf16 kernels, AMX, AVX-512): AVX2-only machines compute
# bf16 about 100x slower, and a release says which kind of machine made it.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """`cpu_model`, the `cpu_flags` of CPU_FLAGS it has, and `memory_bytes` (Linux; empty elsewhere)."""
    info: dict[str, Any] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        elif key.strip() == "flags" and "cpu_flags" not in info:
            info["cpu_flags"] = [flag for flag in CPU_FLAGS if flag in value.split()]
    try:
        info["memory_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    return info


def recipe_key(stage: str, stage_config: Any, parents: list[str], code: str, seed: int | None) -> str:
    """Everything that determines a stage's output; equal keys mean the stored artifact can be reused."""
    return sha256_json(
        {"stage": stage, "config": stage_config, "parents": sorted(parents), "code": code, "seed": seed}
    )
