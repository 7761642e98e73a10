"""Resolve user-given data paths against the data-directory setting (env LMFORGE_DATA_DIR)."""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from lmforge.core.errors import ConfigError, DataError

DATA_DIR_ENV = "LMFORGE_DATA_DIR"
HF_PREFIX = "hf://"


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def is_hf_uri(path: str) -> bool:
    return path.startswith(HF_PREFIX)


def local_data_found(pattern: str, data_dir: Path | None) -> bool:
    """Whether `pattern` (absolute, or relative to `data_dir`; globs allowed) matches anything on disk:
    where it does not, a configured hub fallback is read instead."""
    expanded = Path(pattern).expanduser()
    if not expanded.is_absolute():
        if data_dir is None:
            return False
        expanded = data_dir / expanded
    return next(glob.iglob(str(expanded), recursive=True), None) is not None


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
# One hub request; all of a run's lookups together get HUB_DEADLINE_S, so an unreachable hub stops a
# run within seconds of start-up, not after a client's default timeouts and retries.
HUB_TIMEOUT_S = 10.0
HUB_DEADLINE_S = 15.0


def split_revision(uri: str) -> tuple[str, str | None]:
    """(`hf://owner/name?query` without its revision, the revision or None) of an hf:// URI."""
    body, sep, query = uri[len(HF_PREFIX) :].partition("?")
    dataset, mark, revision = body.partition(REVISION_MARK)
    return f"{HF_PREFIX}{dataset}{sep}{query}", (revision or None) if mark else None


@dataclass(frozen=True)
class HubDataset:
    dataset: str
    config: str | None
    split: str
    revision: str | None = None  # a commit sha once the flow has pinned the URI


def parse_hf_uri(uri: str, key: str, default_config: str | None, default_split: str) -> HubDataset:
    """Split `hf://dataset[@revision]?config=..&split=..` into its parts; unknown query keys are a ConfigError."""
    bare, revision = split_revision(uri)
    body, _, query = bare[len(HF_PREFIX) :].partition("?")
    params = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - {"config", "split"})
    if not body or unknown:
        raise ConfigError(
            f"{key}: {uri!r} is not hf://<dataset>[?config=<name>&split=<split>]"
            + (f" (unknown parameters: {', '.join(unknown)})" if unknown else "")
        )
    config, split = params.get("config") or default_config, params.get("split") or default_split
    return HubDataset(body, config, split, revision)


def hub_dataset_id(uri: str) -> str:
    """`owner/name` of `hf://owner/name@rev?query`."""
    return split_revision(uri)[0][len(HF_PREFIX) :].partition("?")[0]


def hub_endpoint() -> str:
    """The hub the lookups go to: https://huggingface.co, or $HF_ENDPOINT."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_commit(dataset_id: str, revision: str | None) -> str:
    """The commit sha that `revision` (a branch, tag or sha; None = main) of a hub dataset names now."""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(dataset_id, revision=revision, timeout=HUB_TIMEOUT_S)
    if not info.sha:
        raise DataError(f"hf://{dataset_id}: the hub returned no commit for revision {revision or 'main'}")
    return str(info.sha)


def is_pinned(uri: str) -> bool:
    """Whether an hf:// URI names a full commit sha (so pinning it needs no network)."""
    revision = split_revision(uri)[1]
    return revision is not None and FULL_SHA.match(revision) is not None


def with_commit(uri: str, commit: str) -> str:
    """`hf://owner/name@<commit>?query` from `uri`, whatever revision it named."""
    body, sep, query = split_revision(uri)[0][len(HF_PREFIX) :].partition("?")
    return f"{HF_PREFIX}{body}{REVISION_MARK}{commit}{sep}{query}"


def pin_hub_uri(uri: str, key: str, resolver: RevisionResolver = hub_commit) -> str:
    """`uri` with its revision replaced by the commit it names now, so a recipe and its reader see
    the same data; a URI already pinned to a full commit sha is returned unchanged (no network)."""
    if not is_hf_uri(uri) or is_pinned(uri):
        return uri
    dataset_id = hub_dataset_id(uri)
    try:
        commit = resolver(dataset_id, split_revision(uri)[1])
    except DataError:
        raise
    except Exception as err:  # network, auth, unknown repo: all mean "cannot pin"
        raise DataError(
            f"{key}: cannot pin {uri!r} to a hub commit ({type(err).__name__}: {err}); "
            f"without network access give the commit yourself: hf://{dataset_id}@<sha>"
        ) from None
    return with_commit(uri, commit)


def pin_hub_uris(
    uris: Mapping[str, str], resolver: RevisionResolver = hub_commit, deadline_s: float = HUB_DEADLINE_S
) -> tuple[dict[str, str], dict[str, str]]:
    """Pin every unpinned hf:// URI of `uris` (config key -> URI) at once: (pinned URI by key, why
    not by key). One lookup per data set and revision, all in parallel and given `deadline_s` in all,
    so several data sets on an unreachable hub cost one timeout, and URIs of one data set share a commit."""
    wanted = {key: uri for key, uri in uris.items() if is_hf_uri(uri) and not is_pinned(uri)}
    lookups = sorted({(hub_dataset_id(uri), split_revision(uri)[1]) for uri in wanted.values()}, key=str)
    answers = _answers_within(lookups, resolver, deadline_s)
    pinned: dict[str, str] = {}
    failed: dict[str, str] = {}
    for key, uri in wanted.items():
        answer = answers[(hub_dataset_id(uri), split_revision(uri)[1])]
        if isinstance(answer, str):
            pinned[key] = with_commit(uri, answer)
        else:
            failed[key] = _short_reason(answer)
    return pinned, failed


def _answers_within(
    lookups: list[tuple[str, str | None]], resolver: RevisionResolver, deadline_s: float
) -> dict[tuple[str, str | None], str | BaseException]:
    # Daemon threads: a lookup stuck past the deadline (a DNS query, say) must not hold up the exit.
    answers: dict[tuple[str, str | None], str | BaseException] = {}

    def look_up(lookup: tuple[str, str | None]) -> None:
        try:
            answers[lookup] = resolver(*lookup)
        except Exception as err:  # network, auth, unknown repo: all mean "cannot pin"
            answers[lookup] = err

    threads = [threading.Thread(target=look_up, args=(lookup,), daemon=True) for lookup in lookups]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    late = TimeoutError(f"no answer within {deadline_s:g} s")
    return {lookup: answers.get(lookup, late) for lookup in lookups}


def _short_reason(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    reason = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."
