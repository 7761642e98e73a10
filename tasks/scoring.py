"""Log-likelihood of continuations under a causal LM, with shared work done once; and of decoder
targets under an encoder-decoder (`target_log_likelihoods`).

For the causal LM, two savings, both exact (the same sums up to float32 rounding):
- requests whose model input is the same, or a prefix of another's, share one row: the input is
  context + continuation[:-1], so the one-token labels of an ICL prompt are all scored from one pass;
- the token prefix every untruncated row starts with (the ICL demonstrations) runs once, and each
  batch attends to its cached keys/values instead of recomputing them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ContinuationRequest:
    context_ids: list[int]
    continuation_ids: list[int]


@dataclass
class Row:
    """One model input; the requests it serves read logits at positions >= first_position."""

    ids: list[int]
    first_position: int
    truncated: bool


def fit_to_window(request: ContinuationRequest, max_length: int) -> tuple[list[int], bool]:
    """context + continuation, dropping context tokens from the left to fit; (ids, truncated)."""
    if not request.continuation_ids or not request.context_ids:
        raise ValueError("a request needs at least one context and one continuation token")
    if len(request.continuation_ids) >= max_length:
        raise ValueError(f"a continuation of {len(request.continuation_ids)} tokens leaves no context")
    ids = request.context_ids + request.continuation_ids
    return ids[-max_length:], len(ids) > max_length


def plan_rows(
    requests: Sequence[ContinuationRequest], max_length: int
) -> tuple[list[Row], list[tuple[int, int]], int]:
    """The rows to run; per request (row index, position whose logits predict its first token)."""
    fitted = [fit_to_window(request, max_length) for request in requests]
    # A shorter continuation's input can equal a longer one's input cut by at most this many tokens.
    span = max(len(request.continuation_ids) for request in requests) - 1
    rows: list[Row] = []
    row_of: dict[tuple[int, ...], int] = {}
    placements = [(0, 0)] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: -len(fitted[i][0])):
        ids, truncated = fitted[i]
        inputs = tuple(ids[:-1])  # the last token is only ever a target
        start = len(ids) - len(requests[i].continuation_ids) - 1
        if inputs not in row_of:
            rows.append(Row(list(inputs), start, truncated))
            for cut in range(min(span, len(inputs) - 1) + 1):
                row_of.setdefault(inputs[: len(inputs) - cut], len(rows) - 1)
        row = row_of[inputs]
        rows[row].first_position = min(rows[row].first_position, start)
        placements[i] = (row, start)
    return rows, placements, sum(truncated for _, truncated in fitted)


def shared_prefix(rows: Sequence[Row]) -> list[int]:
    """The longest token prefix of every untruncated row that ends before any scored position."""
    candidates = [row for row in rows if not row.truncated]
    if not candidates:
        return []
    common = os.path.commonprefix([row.ids for row in candidates])
    return list(common[: min(row.first_position for row in candidates)])


def prefix_keys_values(base: Any, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of the prefix, each [1, heads, len(prefix), head_dim]."""
    cache = base(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def row_hidden_states(
    base: Any, rows: Sequence[Row], prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
) -> torch.Tensor:
    """Last hidden states of each row's tokens after the cached prefix, right-padded: [rows, width, d].

    Right padding keeps every real token at its true position (prefix length + offset, which GPT-2
    derives from the cache length), and causal attention never lets a real token see the padding.
    """
    from transformers import DynamicCache

    skip = prefix_kv[0][0].shape[2] if prefix_kv else 0
    width = max(len(row.ids) - skip for row in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.ones((len(rows), skip + width), dtype=torch.long)
    for index, row in enumerate(rows):
        suffix = row.ids[skip:]
        input_ids[index, : len(suffix)] = torch.tensor(suffix)
        attention_mask[index, skip + len(suffix) :] = 0
    cache = None
    if prefix_kv:
        # expand() is a view; the cache copies it when the batch's new keys/values are appended.
        shape = (len(rows), -1, -1, -1)
        cache = DynamicCache([(keys.expand(shape), values.expand(shape)) for keys, values in prefix_kv])
    output = base(
        input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=cache is not None
    )
    return output.last_hidden_state


@torch.inference_mode()
def continuation_log_likelihoods(
    model: Any, requests: Sequence[ContinuationRequest], max_length: int, batch_size: int
) -> tuple[list[float], int]:
    """Sum of log p(continuation token | everything before it) per request; also the truncation count.

    Contexts longer than the window lose tokens from the left. The LM head runs only at the
    positions that predict continuation tokens.
    """
    if not requests:
        return [], 0
    rows, placements, num_truncated = plan_rows(requests, max_length)
    wanted: list[set[tuple[int, int]]] = [set() for _ in rows]  # per row: (position, target token)
    for request, (row, start) in zip(requests, placements, strict=True):
        wanted[row].update((start + j, token) for j, token in enumerate(request.continuation_ids))
    base, head = model.base_model, model.get_output_embeddings()
    prefix = shared_prefix(rows)
    with_prefix = [
        r
        for r, row in enumerate(rows)
        if prefix and row.first_position >= len(prefix) and row.ids[: len(prefix)] == prefix
    ]
    without_prefix = sorted(set(range(len(rows))) - set(with_prefix))
    found: dict[tuple[int, int, int], float] = {}  # (row, position, target) -> log-probability
    for group, kv in (
        (without_prefix, None),
        (with_prefix, prefix_keys_values(base, prefix) if prefix else None),
    ):
        # Similar lengths together keep padding small.
        group = sorted(group, key=lambda r: len(rows[r].ids))
        for begin in range(0, len(group), batch_size):
            chunk = group[begin : begin + batch_size]
            hidden = row_hidden_states(base, [rows[r] for r in chunk], kv)
            found.update(target_log_probs(head, hidden, chunk, wanted, len(prefix) if kv else 0))
    scores = [
        sum(found[(row, start + j, token)] for j, token in enumerate(request.continuation_ids))
        for request, (row, start) in zip(requests, placements, strict=True)
    ]
    return scores, num_truncated


def target_log_probs(
    head: Any, hidden: torch.Tensor, chunk: list[int], wanted: list[set[tuple[int, int]]], skip: int
) -> dict[tuple[int, int, int], float]:
    """log p(target | tokens before position + 1) for every wanted (position, target) of the chunk's rows."""
    keys = [(r, position, target) for r in chunk for position, target in sorted(wanted[r])]
    index = {r: i for i, r in enumerate(chunk)}
    batch_rows = torch.tensor([index[r] for r, _, _ in keys])
    positions = torch.tensor([position - skip for _, position, _ in keys])
    logits = head(hidden[batch_rows, positions]).float()
    values = torch.log_softmax(logits, dim=-1)[torch.arange(len(keys)), torch.tensor([t for *_, t in keys])]
    return dict(zip(keys, values.double().tolist(), strict=True))


@dataclass(frozen=True)
class TargetRequest:
    """An encoder input and a decoder sequence `given_ids + target_ids`; only the targets are scored."""

    encoder_ids: list[int]
    given_ids: list[int]
    target_ids: list[int]


def pad_rows(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask of the real tokens), right-padded to the longest row."""
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return ids, mask


@torch.inference_mode()
def target_log_likelihoods(model: Any, requests: Sequence[TargetRequest], batch_size: int) -> list[float]:
    """Per request, the sum over its target tokens of log p(token | encoder input, decoder start
    token, given tokens, earlier target tokens) under an encoder-decoder (teacher forcing).

    Each distinct encoder input runs through the encoder once, in batches of `batch_size` inputs;
    every request on it reuses the encoder states. Right padding is exact: the encoder masks it,
    and the causal decoder never attends to the padding after a row's real tokens.
    """
    from transformers.modeling_outputs import BaseModelOutput

    if any(not request.target_ids for request in requests):
        raise ValueError("a request needs at least one target token")
    pad_id, start_id = model.config.pad_token_id, model.config.decoder_start_token_id
    encoder_inputs = list(dict.fromkeys(tuple(request.encoder_ids) for request in requests))
    users: dict[tuple[int, ...], list[int]] = {ids: [] for ids in encoder_inputs}
    for index, request in enumerate(requests):
        users[tuple(request.encoder_ids)].append(index)
    scores = [0.0] * len(requests)
    for begin in range(0, len(encoder_inputs), batch_size):
        chunk = encoder_inputs[begin : begin + batch_size]
        input_ids, attention_mask = pad_rows([list(ids) for ids in chunk], pad_id)
        hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        served = [(row, index) for row, ids in enumerate(chunk) for index in users[ids]]
        rows = torch.tensor([row for row, _ in served])
        decoder_ids, _ = pad_rows(
            [[start_id, *requests[i].given_ids, *requests[i].target_ids[:-1]] for _, i in served], pad_id
        )
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden[rows]),
            attention_mask=attention_mask[rows],
            decoder_input_ids=decoder_ids,
        ).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).double()
        for position, (_, index) in enumerate(served):
            request = requests[index]
            first = len(request.given_ids)
            scores[index] = sum(
                float(log_probs[position, first + j, token]) for j, token in enumerate(request.target_ids)
            )
    return scores
