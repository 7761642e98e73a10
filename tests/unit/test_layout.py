"""The installed import names are namespaced under `lmforge.`; the stage folders stay at the top."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_FOLDERS = ("corpus", "tokenization", "training", "tasks", "infra", "flows")
BARE_IMPORT = re.compile(rf"^\s*(from|import)\s+({'|'.join(STAGE_FOLDERS)})\b", re.M)


def python_sources() -> list[Path]:
    folders = [*STAGE_FOLDERS, "lmforge/core", "lmforge/app", "tests", "bench"]
    return sorted(path for folder in folders for path in (REPO_ROOT / folder).rglob("*.py"))


def test_stage_folders_are_lmforge_subpackages():
    import lmforge

    for name in STAGE_FOLDERS:
        link = REPO_ROOT / "lmforge" / name
        assert link.is_symlink() and link.resolve() == (REPO_ROOT / name).resolve(), link
        module = __import__(f"lmforge.{name}", fromlist=["__name__"])
        assert Path(module.__file__).resolve() == (REPO_ROOT / name / "__init__.py").resolve()
    assert Path(lmforge.__file__).resolve().parent == REPO_ROOT / "lmforge"


def test_no_module_imports_a_stage_folder_by_its_bare_name():
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {match.group(0).strip()}"
        for path in python_sources()
        for match in BARE_IMPORT.finditer(path.read_text())
    ]
    assert offenders == []


def test_the_bare_check_catches_a_bare_import():
    assert BARE_IMPORT.search("from training.loop import PretrainLoop\n")
    assert BARE_IMPORT.search("    import tasks\n")
    assert not BARE_IMPORT.search("from lmforge.training.loop import PretrainLoop\n")


@pytest.mark.integration
def test_a_wheel_installs_only_lmforge_and_knows_its_code(tmp_path):
    """A plain (non-editable) install: one top-level name, and recipes still see the stage code."""
    import subprocess
    import sys

    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("lmforge-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    top_level = {path.name for path in target.iterdir() if not path.name.endswith(".dist-info")}
    assert top_level - {"bin", "__pycache__"} == {"lmforge"}
    code = (
        "import lmforge.infra.code_identity as c;"
        "i = c.code_identity(('lmforge.tokenization.shard', 'lmforge.flows.steps:shard_step'));"
        "print(c.PACKAGE_ROOT, len(i['modules']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    root, count = result.stdout.split()
    assert root == str(target / "lmforge") and int(count) > 10
