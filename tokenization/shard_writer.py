"""Writing and reading `input_ids` Parquet shards of fixed-length token sequences."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.core.errors import ArtifactError
from lmforge.infra.artifact_files import sha256_file
from lmforge.tokenization.packing import TOKEN_DTYPE, Packer

INPUT_IDS = "input_ids"


class SplitWriter:
    """Packs one split's documents and writes its sequences into shards of `sequences_per_shard` rows."""

    def __init__(self, split: str, packer: Packer, output_dir: Path, sequences_per_shard: int) -> None:
        self.split = split
        self.packer = packer
        self.output_dir = output_dir
        self.sequences_per_shard = sequences_per_shard
        self.shards: list[dict[str, Any]] = []
        self.num_empty_documents = 0
        # Records which documents went to this split, in order, without listing them in the manifest.
        self._doc_ids = hashlib.sha256()
        self._pending: list[np.ndarray] = []
        self._num_pending = 0

    def add_document(self, doc_id: str, token_ids: np.ndarray) -> None:
        self._doc_ids.update(doc_id.encode() + b"\n")
        if len(token_ids) == 0:
            # An empty document would only add a lone separator to the stream.
            self.num_empty_documents += 1
            return
        sequences = self.packer.add_document(token_ids)
        if len(sequences):
            self._pending.append(sequences)
            self._num_pending += len(sequences)
        while self._num_pending >= self.sequences_per_shard:
            self._write_shard(self.sequences_per_shard)

    def finish(self) -> dict[str, Any]:
        """Drop the packer's partial tail, write the last (short) shard, and return the split totals."""
        self.packer.finish()
        if self._num_pending:
            self._write_shard(self._num_pending)
        return {
            **self.packer.stats(),
            "num_empty_documents": self.num_empty_documents,
            "num_shards": len(self.shards),
            "doc_ids_sha256": self._doc_ids.hexdigest(),
        }

    def _write_shard(self, num_rows: int) -> None:
        rows = np.concatenate(self._pending)
        remainder = rows[num_rows:]
        self._pending = [remainder] if len(remainder) else []
        self._num_pending = len(remainder)
        path = self.output_dir / f"{self.split}-{len(self.shards):05d}.parquet"
        write_sequences(rows[:num_rows], path)
        self.shards.append(
            {
                "path": path.name,
                "split": self.split,
                "sha256": sha256_file(path),
                "num_sequences": num_rows,
                "num_tokens": int(rows[:num_rows].size),
            }
        )


def write_sequences(sequences: np.ndarray, path: Path) -> None:
    """[N, seq_len] int32 -> Parquet with one `input_ids: list<int32>` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    num_rows, seq_len = sequences.shape
    offsets = pa.array(np.arange(0, num_rows * seq_len + 1, seq_len, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(sequences, dtype=TOKEN_DTYPE).reshape(-1))
    table = pa.table({INPUT_IDS: pa.ListArray.from_arrays(offsets, values)})
    pq.write_table(table, path)


def read_sequences(path: Path, seq_len: int) -> np.ndarray:
    """A shard back as an [N, seq_len] int32 array; ArtifactError if a row has another length."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=[INPUT_IDS]).column(INPUT_IDS).combine_chunks()
    except (OSError, KeyError) as err:
        raise ArtifactError(f"cannot read {INPUT_IDS!r} from shard {path}: {err}") from None
    if len(column) and not pc.all(pc.equal(pc.list_value_length(column), seq_len)).as_py():
        raise ArtifactError(f"shard {path} has rows whose length is not seq_len={seq_len}")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(TOKEN_DTYPE, copy=False)
    return values.reshape(len(column), seq_len)
