"""Sentence-pair inputs from packed chunks: BERT next-sentence prediction and ALBERT sentence order.

Each chunk row is one contiguous piece of one document. It is cut at a uniform point into A and B;
NSP replaces B, half of the time, by a piece of another row (label 1 = NotNext, as HF's
`next_sentence_label`); SOP swaps A and B half of the time (label 1 = swapped, as ALBERT's
`sentence_order_label`). The caller masks `input_ids` afterwards (pad must be among special ids).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch


class Segments(NamedTuple):
    """Where each row's two segments come from: (source row, start, length) for each, plus labels."""

    first_start: torch.Tensor
    first_length: torch.Tensor
    second_row: torch.Tensor
    second_start: torch.Tensor
    second_length: torch.Tensor
    labels: torch.Tensor


def _next_sentence(cut: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> Segments:
    rows = len(lengths)
    if rows < 2:
        raise ValueError(
            f"next-sentence pairs take random segments from other rows: need >= 2 rows, got {rows}"
        )
    is_random = torch.rand(rows, generator=generator) < 0.5
    # An offset in [1, rows - 1] picks every other row with equal probability, never the row itself.
    other = (torch.arange(rows) + torch.randint(1, rows, (rows,), generator=generator)) % rows
    own_length = lengths - cut
    random_length = torch.minimum(own_length, lengths[other])
    # A uniform start among the places the segment fits in the other row.
    room = lengths[other] - random_length + 1
    random_start = (torch.rand(rows, generator=generator) * room).long().clamp(max=room - 1)
    return Segments(
        first_start=torch.zeros(rows, dtype=torch.long),
        first_length=cut,
        second_row=torch.where(is_random, other, torch.arange(rows)),
        second_start=torch.where(is_random, random_start, cut),
        second_length=torch.where(is_random, random_length, own_length),
        labels=is_random.long(),
    )


def _sentence_order(cut: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> Segments:
    rows = len(lengths)
    swapped = torch.rand(rows, generator=generator) < 0.5
    zero = torch.zeros(rows, dtype=torch.long)
    return Segments(
        first_start=torch.where(swapped, cut, zero),
        first_length=torch.where(swapped, lengths - cut, cut),
        second_row=torch.arange(rows),
        second_start=torch.where(swapped, zero, cut),
        second_length=torch.where(swapped, cut, lengths - cut),
        labels=swapped.long(),
    )


PAIR_KINDS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], Segments]] = {
    "nsp": _next_sentence,
    "sop": _sentence_order,
}


def make_pairs(
    chunks: torch.Tensor,
    lengths: torch.Tensor,
    kind: Literal["nsp", "sop"],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """`[CLS] A [SEP] B [SEP]` pairs, right-padded to L + 3, with NSP or SOP labels.

    chunks: [B, L] token ids, each row one document piece right-padded with pad_id.
    lengths: [B] real tokens per row, each in [2, L].
    Returns input_ids, token_type_ids (1 on B and its [SEP]), attention_mask (1 on real tokens),
    all [B, L + 3] int64, and pair_labels [B] int64. Random draws are made on CPU with `generator`.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown sentence-pair kind {kind!r} (known: {', '.join(PAIR_KINDS)})")
    if chunks.dim() != 2:
        raise ValueError(f"chunks must be [batch, length], got shape {tuple(chunks.shape)}")
    ids = chunks.to(device="cpu", dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    rows, width = ids.shape
    if lengths.shape != (rows,):
        raise ValueError(f"lengths must have shape ({rows},), got {tuple(lengths.shape)}")
    if rows and (int(lengths.min()) < 2 or int(lengths.max()) > width):
        raise ValueError(f"every length must be in [2, {width}] to cut a row in two, got {lengths.tolist()}")

    # A uniform cut in [1, length - 1]: both segments keep at least one token.
    cut = 1 + (torch.rand(rows, generator=generator) * (lengths - 1)).long().clamp(max=lengths - 2)
    segments = PAIR_KINDS[kind](cut, lengths, generator)
    pairs = _assemble(ids, segments, cls_id, sep_id, pad_id)
    return {name: tensor.to(chunks.device) for name, tensor in pairs.items()}


def _assemble(
    ids: torch.Tensor, segments: Segments, cls_id: int, sep_id: int, pad_id: int
) -> dict[str, torch.Tensor]:
    rows, width = ids.shape
    position = torch.arange(width + 3).expand(rows, -1)
    first_end = segments.first_length[:, None] + 1  # first [SEP]
    second_end = first_end + 1 + segments.second_length[:, None]  # last [SEP]
    in_first = (position >= 1) & (position < first_end)
    in_second = (position > first_end) & (position < second_end)

    first_source = (segments.first_start[:, None] + position - 1).clamp(0, width - 1)
    second_source = (segments.second_start[:, None] + position - first_end - 1).clamp(0, width - 1)
    input_ids = torch.full((rows, width + 3), pad_id, dtype=torch.long)
    input_ids[:, 0] = cls_id
    input_ids = torch.where(in_first, ids.gather(1, first_source), input_ids)
    input_ids = torch.where(in_second, ids[segments.second_row].gather(1, second_source), input_ids)
    is_sep = (position == first_end) | (position == second_end)
    input_ids = torch.where(is_sep, torch.tensor(sep_id), input_ids)
    return {
        "input_ids": input_ids,
        "token_type_ids": ((position > first_end) & (position <= second_end)).long(),
        "attention_mask": (position <= second_end).long(),
        "pair_labels": segments.labels,
    }
