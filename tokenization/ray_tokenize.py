"""Tokenization of the corpus, streamed back to the driver in corpus order: in this process on a
local runtime, by a Ray Data actor pool on a cluster. Both run the same batch function, so the ids
are the same by construction."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lmforge.tokenization.packing import TOKEN_DTYPE
from lmforge.tokenization.train import TOKENIZER_FILE

T = TypeVar("T")
R = TypeVar("R")
# Tokenize batches in flight at once when tokenizing in this process.
IN_PROCESS_BATCHES = 2


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
        # No post-processor specials: packing inserts separators and wrappers itself. The fast
        # variant skips the offsets, which nothing here reads; the ids are the same.
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        input_ids = pa.array([encoding.ids for encoding in encodings], type=pa.list_(pa.int32()))
        return pa.table({"doc_id": batch.column("doc_id"), "input_ids": input_ids})


def iter_tokenized_documents(
    files: Sequence[str], tokenizer_dir: Path, batch_size: int, in_process: bool | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(doc_id, token ids) for every corpus document, in corpus order.

    `files`: the corpus part files as paths or fsspec URLs that every Ray node can open (the
    artifact store's locations of the files, not the driver's cached copies).
    `in_process`: tokenize here instead of on a Ray Data actor pool; None: here when
    `runs_on_this_machine(files)`.
    """
    tokenizer_json = (Path(tokenizer_dir) / TOKENIZER_FILE).read_text()
    if in_process is None:
        in_process = runs_on_this_machine(files)
    tables = _tokenize_here if in_process else _tokenize_on_ray
    for table in tables(files, tokenizer_json, batch_size):
        yield from _rows(table)


def runs_on_this_machine(files: Sequence[str]) -> bool:
    """Whether a Ray Data pool would only use this machine's cores: local files and no Ray cluster.

    Then the Rust tokenizer's own threads use the same cores without Ray's actor start-up, block
    transfers and scheduling (the shard stage then needs no Ray runtime at all).
    """
    from lmforge.infra.ray_runtime import local_runtime_pending, ray_initialized
    from lmforge.infra.remote_fs import is_url

    if any(is_url(uri) for uri in files):
        return False
    if ray_initialized():
        import ray

        # A runtime already started here may be connected to a cluster of several nodes.
        return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1
    return local_runtime_pending()


def _tokenize_here(files: Sequence[str], tokenizer_json: str, batch_size: int) -> Iterable[Any]:
    import pyarrow as pa

    tables = (
        table for uri in files for table in _read_corpus_files(pa.table({"path": [str(uri)]}), batch_size)
    )
    # Two batches in flight: encode_batch releases the GIL, so one batch's Rust encoding overlaps the
    # other's id conversion and the driver's packing, keeping both cores busy.
    return _ordered_map(TokenizeBatch(tokenizer_json), tables, IN_PROCESS_BATCHES)


def _tokenize_on_ray(files: Sequence[str], tokenizer_json: str, batch_size: int) -> Iterable[Any]:
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
        fn_constructor_args=(tokenizer_json,),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cluster_cpus())),
        num_cpus=1,
    )
    return tokenized.iter_batches(batch_size=None, batch_format="pyarrow")


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """`fn(item)` for each of `items` in order, computed in `depth` worker threads that keep working
    while the caller uses a result: at most `depth` items are taken ahead of the caller."""
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tokenize") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early, or a batch failed
                future.cancel()


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
