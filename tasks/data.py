"""Task data: SST-2 and WikiText from local files or the Hugging Face hub, and validation shards.

Hub datasets are named `hf://<dataset>[?config=<name>&split=<split>]` (for example
`hf://nyu-mll/glue?config=sst2&split=validation`); the task supplies the default config and split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.data_paths import HubDataset, is_hf_uri, parse_hf_uri, resolve_file

log = get_logger(__name__)

SST2_HF_CONFIG = "sst2"
WIKITEXT_HF_CONFIG = "wikitext-2-raw-v1"


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int


def load_hub_split(hub: HubDataset) -> Any:
    """`datasets.load_dataset` for one split (hub id, or a local dataset folder for offline use)."""
    import datasets

    log.info("loading %s (config %s, split %s) with datasets", hub.dataset, hub.config, hub.split)
    return datasets.load_dataset(hub.dataset, hub.config, split=hub.split, revision=hub.revision)


def load_sst2(path: str, data_dir: Path | None, key: str, split: str) -> list[LabelledText]:
    """SST-2 rows from a GLUE `sentence<TAB>label` TSV, or from the hub (`split`: train|validation)."""
    if is_hf_uri(path):
        rows = load_hub_split(parse_hf_uri(path, key, SST2_HF_CONFIG, split))
        missing = {"sentence", "label"} - set(rows.column_names)
        if missing:
            raise DataError(f"{key}: {path!r} has no column(s) {sorted(missing)} (has {rows.column_names})")
        return [
            LabelledText(str(text).strip(), int(label))
            for text, label in zip(rows["sentence"], rows["label"], strict=True)
        ]
    return read_sst2_tsv(resolve_file(path, data_dir, key))


def read_sst2_tsv(file: Path) -> list[LabelledText]:
    lines = file.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip().split("\t") != ["sentence", "label"]:
        raise DataError(f"{file}: expected a 'sentence<TAB>label' header line")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("\t")
        if not sep or label.strip() not in ("0", "1"):
            raise DataError(f"{file}:{number}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
        rows.append(LabelledText(text.strip(), int(label)))
    if not rows:
        raise DataError(f"{file}: no rows")
    return rows


def seeded_subset(rows: list[LabelledText], size: int | None, seed: int) -> list[LabelledText]:
    """A seeded random subset of `size` rows (all rows, shuffled, when size is None or too big)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[: size if size is not None else len(rows)]]


def load_text(path: str, data_dir: Path | None, key: str) -> str:
    """A raw text corpus as one string with `\\n` newlines (WikiText-2 raw file or hub split)."""
    if is_hf_uri(path):
        rows = load_hub_split(parse_hf_uri(path, key, WIKITEXT_HF_CONFIG, "validation"))
        if "text" not in rows.column_names:
            raise DataError(f"{key}: {path!r} has no 'text' column (has {rows.column_names})")
        # Hub rows are the file's lines with their newline kept, so joining restores the file.
        text = "".join(rows["text"])
    else:
        text = resolve_file(path, data_dir, key).read_text(encoding="utf-8")
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{key}: {path!r} holds no text")
    return text


def read_validation_sequences(shards_dir: Path, max_sequences: int | None) -> np.ndarray:
    """Validation `input_ids` (num_sequences, seq_len), the first `max_sequences` of them."""
    from lmforge.tokenization.shard import load_split

    sequences = load_split(Path(shards_dir), "validation")[:max_sequences]
    if len(sequences) == 0:
        raise ArtifactError(f"{shards_dir}: the validation shards hold no sequences")
    return sequences.astype(np.int64)
