"""Parallel tokenization of the corpus with Ray Data, streamed back to the driver in corpus order."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.tokenization.packing import TOKEN_DTYPE
from lmforge.tokenization.train import TOKENIZER_FILE


class TokenizeBatch:
    """Ray Data callable class: loads the tokenizer once per actor, encodes a batch of documents."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        # The raw tokenizers object encodes exactly like AutoTokenizer(add_special_tokens=False)
        # without importing transformers in every actor. It arrives as text: actors may run on
        # nodes that cannot see the driver's files.
        self._tokenizer = Tokenizer.from_str(tokenizer_json)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        texts = [text or "" for text in batch.column("text").to_pylist()]
        # No post-processor specials: packing inserts separators and wrappers itself.
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        input_ids = pa.array([encoding.ids for encoding in encodings], type=pa.list_(pa.int32()))
        return pa.table({"doc_id": batch.column("doc_id"), "input_ids": input_ids})


def iter_tokenized_documents(
    files: Sequence[str], tokenizer_dir: Path, batch_size: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(doc_id, token ids) for every corpus document, in corpus order, tokenized by a Ray actor pool.

    `files`: the corpus part files as paths or fsspec URLs that every Ray node can open (the
    artifact store's locations of the files, not the driver's cached copies).
    """
    import ray.data

    from lmforge.infra.ray_runtime import cluster_cpus, ensure_ray

    ensure_ray()  # also turns on preserve_order, which the deterministic packing relies on
    # One read task per file instead of ray.data.read_parquet: its path resolution imports
    # fsspec's HTTP filesystem from several threads, which fails without aiohttp installed.
    paths = ray.data.from_items([{"path": str(uri)} for uri in files], override_num_blocks=len(files))
    dataset = paths.map_batches(
        functools.partial(_read_corpus_files, batch_size=batch_size), batch_size=1, batch_format="pyarrow"
    )
    tokenized = dataset.map_batches(
        TokenizeBatch,
        fn_constructor_args=((Path(tokenizer_dir) / TOKENIZER_FILE).read_text(),),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cluster_cpus())),
        num_cpus=1,
    )
    for table in tokenized.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from _rows(table)


def _read_corpus_files(batch: Any, batch_size: int) -> Iterator[Any]:
    """Ray Data generator: the (doc_id, text) rows of the given corpus files, `batch_size` at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.infra.remote_fs import is_url, open_location

    for uri in batch.column("path").to_pylist():
        if is_url(uri):
            fs, path = open_location(uri)
            opened = fs.open(path, "rb")
        else:
            opened = open(uri, "rb")  # noqa: SIM115  # closed by the with below
        with opened as handle:
            for record_batch in pq.ParquetFile(handle).iter_batches(
                batch_size=batch_size, columns=["doc_id", "text"]
            ):
                yield pa.Table.from_batches([record_batch])


def _rows(table: Any) -> Iterator[tuple[str, np.ndarray]]:
    doc_ids = table.column("doc_id").to_pylist()
    column = table.column("input_ids").combine_chunks()
    # offsets index into .values even when the array is a slice of a larger one.
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(TOKEN_DTYPE, copy=False)
    for index, doc_id in enumerate(doc_ids):
        yield doc_id, values[offsets[index] : offsets[index + 1]]
