"""Which inputs a corpus config reads: path checks before work starts, work items, lineage refs."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.errors import ConfigError
from lmforge.corpus.config import CorpusConfig, SourceConfig
from lmforge.corpus.decontam import EVAL_SPLIT
from lmforge.corpus.hf_reader import hf_dataset_name
from lmforge.infra.data_paths import DATA_DIR_ENV, is_hf_uri, parse_hf_uri, resolve_file, resolve_paths


@dataclass(frozen=True)
class InputRef:
    """One raw input for lineage: a local file (uri relative to the data dir when inside it) or a Hub URI."""

    uri: str
    path: Path | None


@dataclass(frozen=True)
class WorkItem:
    """One unit of parallel reading: a file, or a whole HF dataset (streamed by one worker)."""

    source_index: int
    target: str  # what the reader opens: a local path, or the hf:// URI
    name: str  # stable, machine-independent name of the target, used inside doc ids


def source_key(index: int) -> str:
    return f"corpus.sources[{index}].path"


def check_inputs(config: CorpusConfig, data_dir: Path | None) -> None:
    """Raise ConfigError naming `corpus.sources[i].path` when a local source matches nothing, or the
    key of a decontamination eval set that does not name exactly one file."""
    for index, source in enumerate(config.sources):
        if not is_hf_uri(source.path):
            _local_files(index, source, data_dir)
    eval_set_inputs(config, data_dir)


def eval_set_inputs(config: CorpusConfig, data_dir: Path | None) -> list[InputRef]:
    """The evaluation files decontamination reads (they shape the stage's output, so lineage names them)."""
    if config.decontamination is None:
        return []
    refs = []
    for index, eval_set in enumerate(config.decontamination.eval_sets):
        key = eval_set_key(index)
        if is_hf_uri(eval_set.path):
            parse_hf_uri(eval_set.path, key, None, EVAL_SPLIT)  # checks its form
            refs.append(InputRef(eval_set.path, None))
            continue
        path = resolve_file(eval_set.path, data_dir, key)
        refs.append(InputRef(_display_uri(path, data_dir), path))
    return refs


def eval_set_key(index: int) -> str:
    return f"corpus.decontamination.eval_sets[{index}].path"


def list_inputs(config: CorpusConfig, data_dir: Path | None) -> list[InputRef]:
    """Every local file the config reads (sorted) plus each Hub dataset by URI (path None)."""
    refs: set[InputRef] = set()
    for index, source in enumerate(config.sources):
        if is_hf_uri(source.path):
            refs.add(InputRef(hf_uri(source), None))
            continue
        files = _local_files(index, source, data_dir)
        if source.format == "hf":  # a local dataset directory: hash everything load_dataset may read
            files = [path for root in files for path in _files_below(root)]
        refs.update(InputRef(_display_uri(path, data_dir), path) for path in files)
    return sorted(refs, key=lambda ref: (ref.path is None, ref.uri))


def work_items(config: CorpusConfig, data_dir: Path | None) -> list[WorkItem]:
    """Reading units in deterministic order: sources in config order, files sorted within each."""
    items = []
    for index, source in enumerate(config.sources):
        if is_hf_uri(source.path):
            items.append(WorkItem(index, source.path, _hf_name(source, hf_dataset_name(source.path))))
            continue
        base = _glob_base(source.path, data_dir)
        for path in _local_files(index, source, data_dir):
            name = path.relative_to(base).as_posix() if path != base else path.name
            if source.format == "hf":
                name = _hf_name(source, name)
            items.append(WorkItem(index, str(path), name))
    return items


def hf_uri(source: SourceConfig) -> str:
    config_part = f"name={source.hf_name}&" if source.hf_name else ""
    return f"{source.path}?{config_part}split={source.hf_split}"


def _hf_name(source: SourceConfig, dataset: str) -> str:
    return f"{dataset}/{source.hf_name or 'default'}/{source.hf_split}"


def _local_files(index: int, source: SourceConfig, data_dir: Path | None) -> list[Path]:
    if source.format != "hf":
        return resolve_paths(source.path, data_dir, source_key(index))
    # A local HF dataset is a directory (or a file) that datasets.load_dataset reads itself.
    path = _absolute(index, source.path, data_dir)
    if not path.exists():
        raise ConfigError(f"{source_key(index)}: local dataset {source.path!r} -> {path} does not exist")
    return [path]


def _absolute(index: int, pattern: str, data_dir: Path | None) -> Path:
    path = Path(pattern).expanduser()
    if path.is_absolute():
        return path
    if data_dir is None:
        raise ConfigError(
            f"{source_key(index)}: relative data path {pattern!r} needs a data directory; set {DATA_DIR_ENV}"
        )
    return data_dir / path


def _glob_base(pattern: str, data_dir: Path | None) -> Path:
    """The directory a pattern's matches are named relative to: its longest glob-free prefix."""
    path = Path(pattern).expanduser()
    if not path.is_absolute() and data_dir is not None:
        path = data_dir / path
    parts = path.parts
    for cut, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:cut])
    return path.parent


def _files_below(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(path for path in root.rglob("*") if path.is_file() and not _is_hidden(path, root))


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _display_uri(path: Path, data_dir: Path | None) -> str:
    # Relative to the data dir so lineage and recipe keys do not depend on where the data is mounted.
    if data_dir is not None and path.is_relative_to(data_dir):
        return path.relative_to(data_dir).as_posix()
    return str(path)
