"""Resolve user-given data paths against the data-directory setting (env LMFORGE_DATA_DIR)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from lmforge.core.errors import ConfigError

DATA_DIR_ENV = "LMFORGE_DATA_DIR"
HF_PREFIX = "hf://"


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def is_hf_uri(path: str) -> bool:
    return path.startswith(HF_PREFIX)


def resolve_paths(pattern: str, data_dir: Path | None, key: str) -> list[Path]:
    """Expand `pattern` (absolute, or relative to `data_dir`; globs allowed) to sorted existing files.

    `key` is the config key the pattern came from, named in the error when nothing matches.
    """
    expanded = Path(pattern).expanduser()
    if not expanded.is_absolute():
        if data_dir is None:
            raise ConfigError(
                f"{key}: relative data path {pattern!r} needs a data directory; "
                f"set {DATA_DIR_ENV} or the config's data_dir"
            )
        expanded = data_dir / expanded
    matches = sorted(Path(match) for match in glob.glob(str(expanded), recursive=True))
    files = [match for match in matches if match.is_file()]
    if not files:
        where = f" (data directory: {data_dir})" if data_dir is not None else ""
        raise ConfigError(f"{key}: no file matches {pattern!r} -> {expanded}{where}")
    return files


def resolve_file(path: str, data_dir: Path | None, key: str) -> Path:
    """Like resolve_paths, for a key that must name exactly one file."""
    files = resolve_paths(path, data_dir, key)
    if len(files) != 1:
        raise ConfigError(f"{key}: expected one file, {path!r} matches {len(files)}")
    return files[0]
