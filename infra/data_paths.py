"""Resolve user-given data paths against the data-directory setting (env LMFORGE_DATA_DIR)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from pathlib import Path

from lmforge.core.errors import ConfigError, DataError

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


# A hub dataset is pinned as hf://owner/name@<commit sha>[?query]: same URI, same bytes.
REVISION_MARK = "@"
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
RevisionResolver = Callable[[str, str | None], str]


def split_revision(uri: str) -> tuple[str, str | None]:
    """(`hf://owner/name?query` without its revision, the revision or None) of an hf:// URI."""
    body, sep, query = uri[len(HF_PREFIX) :].partition("?")
    dataset, mark, revision = body.partition(REVISION_MARK)
    return f"{HF_PREFIX}{dataset}{sep}{query}", (revision or None) if mark else None


def hub_dataset_id(uri: str) -> str:
    """`owner/name` of `hf://owner/name@rev?query`."""
    return split_revision(uri)[0][len(HF_PREFIX) :].partition("?")[0]


def hub_commit(dataset_id: str, revision: str | None) -> str:
    """The commit sha that `revision` (a branch, tag or sha; None = main) of a hub dataset names now."""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(dataset_id, revision=revision)
    if not info.sha:
        raise DataError(f"hf://{dataset_id}: the hub returned no commit for revision {revision or 'main'}")
    return str(info.sha)


def pin_hub_uri(uri: str, key: str, resolver: RevisionResolver = hub_commit) -> str:
    """`uri` with its revision replaced by the commit it names now, so a recipe and its reader see
    the same data; a URI already pinned to a full commit sha is returned unchanged (no network)."""
    if not is_hf_uri(uri):
        return uri
    bare, revision = split_revision(uri)
    if revision is not None and FULL_SHA.match(revision):
        return uri
    dataset_id = hub_dataset_id(uri)
    try:
        commit = resolver(dataset_id, revision)
    except DataError:
        raise
    except Exception as err:  # network, auth, unknown repo: all mean "cannot pin"
        raise DataError(
            f"{key}: cannot pin {uri!r} to a hub commit ({type(err).__name__}: {err}); "
            f"without network access give the commit yourself: hf://{dataset_id}@<sha>"
        ) from None
    body, sep, query = bare[len(HF_PREFIX) :].partition("?")
    return f"{HF_PREFIX}{body}{REVISION_MARK}{commit}{sep}{query}"
