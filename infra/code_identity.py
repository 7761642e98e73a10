"""What code shapes a stage's output: the static import closure of its entry modules.

A stage's recipe carries a fingerprint of (a) the source of every lmforge module its entry modules
import, directly or lazily inside functions, normalized through the AST so that comments,
docstrings and formatting do not count while any change of logic does; (b) named functions of
composition code (the flow step that picks arguments for the stage); (c) the versions of the
third-party distributions those modules import, plus the Python version (unicodedata and hashing
live in the standard library).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import os
import platform
import sys
import threading
import time
from pathlib import Path

from lmforge.infra.file_hashes import SETTLED_SECONDS, read_record, write_record
from lmforge.infra.remote_fs import lmforge_cache_dir

PACKAGE = "lmforge"
RECORDS_DIR = "code-identity"
# The installed package folder (site-packages/lmforge in a wheel, the checkout's lmforge/ in an
# editable install, whose stage folders are symlinks): not resolved, so both layouts map alike.
PACKAGE_ROOT = Path(__file__).parents[1]
# Distributions that shape outputs without being imported by our code (they are used through
# the ones we import): safetensors writes transformers' weights, tokenizers backs fast tokenizers.
INDIRECT_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "transformers": ("safetensors", "tokenizers", "huggingface-hub"),
    "datasets": ("pyarrow", "huggingface-hub"),
}


# Fan-out stages compute their recipes in parallel threads, and CPython 3.11.7's ast.parse is not
# thread-safe ("SystemError: AST constructor recursion depth mismatch", fixed upstream in 3.11.8).
_PARSE_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)


def module_path(name: str) -> Path | None:
    """The source file of an lmforge module (`lmforge.training.loop`), or None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module name an AST imports, anywhere in it (lazy imports in functions included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            names.add(base)
            # `from lmforge import corpus` imports a module; `from x import name` may too.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def import_closure(entry_modules: tuple[str, ...]) -> tuple[dict[str, Path], set[str]]:
    """(lmforge module -> file, top-level third-party names) reachable from `entry_modules`.

    A package `__init__` that runs only because one of its submodules is imported counts as source,
    but its own imports are followed only when code imports from the package itself (or names it as
    an entry, as the clean stage does for the corpus readers and filters its `__init__` registers):
    otherwise editing the packer would recompute the tokenizer, whose module merely shares a package.
    """
    pending = [_qualified(name) for name in entry_modules]
    missing = [name for name in pending if module_path(name) is None]
    if missing:
        # An empty closure would make every edit invisible to the recipe: refuse instead.
        raise ValueError(f"no lmforge module {', '.join(missing)} below {PACKAGE_ROOT}")
    found: dict[str, Path] = {}
    followed: set[str] = set()
    third_party: set[str] = set()
    queue = [(name, True) for name in pending]
    while queue:
        name, follow = queue.pop()
        path = module_path(name)
        if path is None:
            if not name.startswith(PACKAGE):
                third_party.add(name.split(".")[0])
            continue
        found[name] = path
        if not follow or name in followed:
            continue
        followed.add(name)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        queue.extend((".".join(name.split(".")[:i]), False) for i in range(2, name.count(".") + 1))
        tree = parse(path.read_text(encoding="utf-8"), str(path))
        queue.extend((imported, True) for imported in imported_names(tree, name, path.name == "__init__.py"))
    return found, {name for name in third_party if name and name not in sys.stdlib_module_names}


def _qualified(name: str) -> str:
    return name if name == PACKAGE or name.startswith(PACKAGE + ".") else f"{PACKAGE}.{name}"


def normalized_source(source: str) -> str:
    """The AST of `source` without docstrings, as text: comments and layout do not count."""
    tree = parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def function_source(qualified: str) -> str:
    """Normalized source of `module:function` (read from the file; nothing is imported)."""
    module, _, function = qualified.partition(":")
    path = module_path(_qualified(module))
    if path is None:
        raise ValueError(f"no lmforge module {module!r} for {qualified!r}")
    for node in parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            return normalized_source(ast.unparse(node))
    raise ValueError(f"{path} has no top-level function {function!r}")


def distribution_versions(import_names: set[str]) -> dict[str, str]:
    """Installed versions of the distributions providing `import_names` (and their indirect ones)."""
    providers = importlib.metadata.packages_distributions()
    names = {dist for name in import_names for dist in providers.get(name, [])}
    names |= {extra for name in list(names) for extra in INDIRECT_DEPENDENCIES.get(name.lower(), ())}
    versions = {}
    for dist in sorted(names, key=str.lower):
        try:
            versions[dist.lower()] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def code_identity(code: tuple[str, ...]) -> dict[str, object]:
    """The code a stage runs, summarized for its recipe: source digest, modules, library versions.

    `code` names entry modules (`lmforge.tokenization.shard`) and functions (`module:function`), in
    any order. Computed once per process and set of names, and remembered across processes (see
    `_code_identity`).
    """
    return _code_identity(tuple(sorted(set(code))))


@functools.cache
def _code_identity(code: tuple[str, ...]) -> dict[str, object]:
    """The identity from its record under `${LMFORGE_CACHE_DIR:-~/.cache/lmforge}/code-identity/`
    when nothing it was computed from has moved: the stat of every source file it read and of their
    folders (a new module file moves its folder), and the site-packages folders, which installing,
    upgrading or removing a distribution changes. Parsing the closure and asking importlib.metadata
    for every distribution took 4.3 s of a fully reused demo run (`bench/startup.py`)."""
    record_path = lmforge_cache_dir() / RECORDS_DIR / f"{_digest([*code, str(PACKAGE_ROOT)])[:32]}.json"
    record = read_record(record_path)
    environment = _environment_key()
    if (
        record is not None
        and record.get("code") == list(code)
        and record.get("environment") == environment
        and record.get("stats") == _stats(record.get("paths", []))
    ):
        return dict(record["identity"])
    identity, paths = _computed_identity(code)
    stats = _stats(paths)
    settled = time.time() - SETTLED_SECONDS
    if all(stat is not None and stat[1] / 1e9 < settled for stat in stats):
        record = {"code": list(code), "environment": environment, "paths": paths, "stats": stats}
        write_record(record_path, {**record, "identity": identity})
    return identity


def _computed_identity(code: tuple[str, ...]) -> tuple[dict[str, object], list[str]]:
    """The identity, and the files and folders it was computed from."""
    functions = tuple(item for item in code if ":" in item)
    modules, third_party = import_closure(tuple(item for item in code if ":" not in item))
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode() + b"\0")
        digest.update(normalized_source(modules[name].read_text(encoding="utf-8")).encode() + b"\0")
    files = set(modules.values())
    for qualified in sorted(functions):
        digest.update(qualified.encode() + b"\0" + function_source(qualified).encode() + b"\0")
        files.add(module_path(_qualified(qualified.partition(":")[0])) or PACKAGE_ROOT)
    identity: dict[str, object] = {
        "source_sha256": digest.hexdigest(),
        "modules": sorted(modules),
        "functions": sorted(functions),
        "libraries": distribution_versions(third_party),
        "python": platform.python_version(),
    }
    paths = sorted({str(path) for path in files} | {str(path.parent) for path in files})
    return identity, paths


def _stats(paths: list[str]) -> list[list[int] | None]:
    """(inode, mtime, ctime, size) of each path in ns; None for a path that is gone."""
    stats: list[list[int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            stats.append(None)
            continue
        stats.append([stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size])
    return stats


def _environment_key() -> list[object]:
    """The interpreter and the stat of the folders importlib.metadata reads distributions from."""
    folders = [path for path in sys.path if os.path.basename(path) in ("site-packages", "dist-packages")]
    return [sys.version, *[[path, *(_stats([path])[0] or [])] for path in folders]]


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
