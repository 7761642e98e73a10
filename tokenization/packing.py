"""Packings keyed by name: how a stream of tokenized documents becomes fixed-length sequences.

A packer is fed one document at a time and returns the sequences completed so far, so packing
streams in constant memory. The final partial window is dropped (no padding) and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from lmforge.core.registry import Registry

TOKEN_DTYPE = np.int32


class Packer:
    """Cuts a separator-joined token stream into `chunk_len` windows and wraps each into a sequence."""

    # Special-token roles (keys of the tokenizer meta's special_ids) this packing needs.
    required_specials: ClassVar[tuple[str, ...]]

    def __init__(self, seq_len: int, special_ids: Mapping[str, int], **options: Any) -> None:
        missing = missing_specials(type(self), special_ids)
        if missing:
            raise ValueError(f"{type(self).__name__} needs special tokens {missing}")
        if options:
            raise ValueError(f"{type(self).__name__} takes no packing options, got {sorted(options)}")
        self.seq_len = seq_len
        # The length the model sees per sequence (the span packing stores longer raw sequences).
        self.input_length = seq_len
        self.chunk_len = seq_len - self.num_wrapper_tokens()
        self._buffer = np.empty(0, dtype=TOKEN_DTYPE)
        self.num_documents = 0
        self.num_document_tokens = 0
        self.num_separator_tokens = 0
        self.num_sequences = 0
        self.num_dropped_tail_tokens = 0

    @classmethod
    def num_wrapper_tokens(cls) -> int:
        return 0

    def separated(self, token_ids: np.ndarray) -> list[np.ndarray]:
        """The pieces one document adds to the stream (the document plus its separators)."""
        raise NotImplementedError

    def wrap(self, chunks: np.ndarray) -> np.ndarray:
        """[k, chunk_len] stream windows -> [k, seq_len] sequences."""
        return chunks

    def add_document(self, token_ids: np.ndarray | list[int]) -> np.ndarray:
        """Feed one document; returns the sequences it completed, shape [k, seq_len] (k may be 0)."""
        token_ids = np.asarray(token_ids, dtype=TOKEN_DTYPE)
        pieces = self.separated(token_ids)
        self.num_documents += 1
        self.num_document_tokens += len(token_ids)
        self.num_separator_tokens += sum(len(piece) for piece in pieces) - len(token_ids)
        stream = np.concatenate([self._buffer, *pieces])
        num_chunks = len(stream) // self.chunk_len
        cut = num_chunks * self.chunk_len
        # Copy the remainder so the buffer never pins a large stream array.
        self._buffer = stream[cut:].copy()
        self.num_sequences += num_chunks
        return self.wrap(stream[:cut].reshape(num_chunks, self.chunk_len))

    def finish(self) -> int:
        """Drop the partial last window; returns how many stream tokens it held."""
        self.num_dropped_tail_tokens += len(self._buffer)
        self._buffer = np.empty(0, dtype=TOKEN_DTYPE)
        return self.num_dropped_tail_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens in emitted sequences (wrappers included)."""
        return self.num_sequences * self.seq_len

    def stats(self) -> dict[str, int]:
        return {
            "num_documents": self.num_documents,
            "num_sequences": self.num_sequences,
            "num_tokens": self.num_tokens,
            "num_document_tokens": self.num_document_tokens,
            "num_separator_tokens": self.num_separator_tokens,
            "num_dropped_tail_tokens": self.num_dropped_tail_tokens,
        }


PACKINGS: Registry[type[Packer]] = Registry("packing")


def missing_specials(packing: type[Packer], special_ids: Mapping[str, int]) -> list[str]:
    return [role for role in packing.required_specials if role not in special_ids]


@PACKINGS.register("clm")
class CausalPacker(Packer):
    """GPT style: every document followed by EOS, the stream cut into seq_len windows."""

    required_specials = ("eos",)

    def __init__(self, seq_len: int, special_ids: Mapping[str, int], **options: Any) -> None:
        super().__init__(seq_len, special_ids, **options)
        self._eos = np.array([special_ids["eos"]], dtype=TOKEN_DTYPE)

    def separated(self, token_ids: np.ndarray) -> list[np.ndarray]:
        return [token_ids, self._eos]


@PACKINGS.register("mlm")
class MaskedPacker(Packer):
    """BERT/RoBERTa style: documents joined by SEP, cut into seq_len - 2 chunks, each [CLS] chunk [SEP]."""

    required_specials = ("cls", "sep")

    def __init__(self, seq_len: int, special_ids: Mapping[str, int], **options: Any) -> None:
        super().__init__(seq_len, special_ids, **options)
        self._cls = special_ids["cls"]
        self._sep = special_ids["sep"]

    @classmethod
    def num_wrapper_tokens(cls) -> int:
        return 2

    def separated(self, token_ids: np.ndarray) -> list[np.ndarray]:
        # A separator goes between documents, so the first document of the stream has none.
        if self.num_documents == 0:
            return [token_ids]
        return [np.array([self._sep], dtype=TOKEN_DTYPE), token_ids]

    def wrap(self, chunks: np.ndarray) -> np.ndarray:
        sequences = np.empty((len(chunks), self.seq_len), dtype=TOKEN_DTYPE)
        sequences[:, 0] = self._cls
        sequences[:, 1:-1] = chunks
        sequences[:, -1] = self._sep
        return sequences


@PACKINGS.register("span")
class SpanPacker(CausalPacker):
    """T5 style: the EOS-joined stream cut into raw windows of `raw_length` tokens, the length that
    span corruption turns into exactly `seq_len` encoder tokens (and `target_length` targets).

    The corruption itself happens at training time (fresh noise every epoch); the objective
    computes `raw_length` and `target_length` from `seq_len` and its noise settings.
    """

    required_specials = ("eos",)

    def __init__(
        self, seq_len: int, special_ids: Mapping[str, int], *, raw_length: int, target_length: int
    ) -> None:
        super().__init__(raw_length, special_ids)
        self.input_length = seq_len
        self.target_length = target_length


@PACKINGS.register("pair")
class PairPacker(Packer):
    """BERT NSP / ALBERT SOP: each document cut into chunks of `seq_len - 3` tokens that never cross a
    document boundary; a document's last chunk is right-padded with [PAD] (it must hold at least two
    tokens, one per segment). The objective splits each chunk into segments A and B and builds
    `[CLS] A [SEP] B [SEP]` (seq_len tokens) at training time, so pairs are fresh each epoch.
    """

    required_specials = ("cls", "sep", "pad")
    min_chunk_tokens = 2

    def __init__(self, seq_len: int, special_ids: Mapping[str, int], **options: Any) -> None:
        super().__init__(seq_len - 3, special_ids, **options)
        self.input_length = seq_len
        self._pad = special_ids["pad"]
        self.num_padding_tokens = 0

    def add_document(self, token_ids: np.ndarray | list[int]) -> np.ndarray:
        token_ids = np.asarray(token_ids, dtype=TOKEN_DTYPE)
        self.num_documents += 1
        self.num_document_tokens += len(token_ids)
        num_full, rest = divmod(len(token_ids), self.chunk_len)
        if rest < self.min_chunk_tokens:
            self.num_dropped_tail_tokens += rest
            rest = 0
        padded = np.full((num_full + (rest > 0)) * self.chunk_len, self._pad, dtype=TOKEN_DTYPE)
        padded[: num_full * self.chunk_len + rest] = token_ids[: num_full * self.chunk_len + rest]
        if rest:
            self.num_padding_tokens += self.chunk_len - rest
        sequences = padded.reshape(-1, self.chunk_len)
        self.num_sequences += len(sequences)
        return sequences

    def finish(self) -> int:
        return self.num_dropped_tail_tokens

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "num_padding_tokens": self.num_padding_tokens}
