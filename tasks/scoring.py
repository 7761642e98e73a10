"""Log-likelihood of continuations under a causal LM, batched with right padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ContinuationRequest:
    context_ids: list[int]
    continuation_ids: list[int]


def fit_to_window(request: ContinuationRequest, max_length: int) -> tuple[list[int], bool]:
    """context + continuation, dropping context tokens from the left to fit; (ids, truncated)."""
    if not request.continuation_ids or not request.context_ids:
        raise ValueError("a request needs at least one context and one continuation token")
    if len(request.continuation_ids) >= max_length:
        raise ValueError(f"a continuation of {len(request.continuation_ids)} tokens leaves no context")
    ids = request.context_ids + request.continuation_ids
    return ids[-max_length:], len(ids) > max_length


@torch.inference_mode()
def continuation_log_likelihoods(
    model: Any, requests: Sequence[ContinuationRequest], max_length: int, batch_size: int
) -> tuple[list[float], int]:
    """Sum of log p(continuation token | everything before it) per request; also the truncation count.

    Sequences are right-padded, so real tokens keep positions 0..n-1 and causal attention never sees
    the padding; the LM head runs only at the positions that predict continuation tokens.
    """
    fitted = [fit_to_window(request, max_length) for request in requests]
    # Similar lengths together keep padding small; results are put back in request order.
    order = sorted(range(len(requests)), key=lambda i: len(fitted[i][0]))
    scores = [0.0] * len(requests)
    base, head = model.base_model, model.get_output_embeddings()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(fitted[i][0]) for i in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        rows, positions, targets = [], [], []
        for row, i in enumerate(chunk):
            ids = fitted[i][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            num_cont = len(requests[i].continuation_ids)
            for offset in range(len(ids) - num_cont, len(ids)):
                rows.append(row)
                positions.append(offset - 1)  # logits at t predict token t + 1
                targets.append(ids[offset])
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[torch.tensor(rows), torch.tensor(positions)]).float()
        token_log_probs = torch.log_softmax(logits, dim=-1)[torch.arange(len(targets)), torch.tensor(targets)]
        per_row = torch.zeros(len(chunk), dtype=torch.float64).index_add_(
            0, torch.tensor(rows), token_log_probs.double()
        )
        for row, i in enumerate(chunk):
            scores[i] = float(per_row[row])
    return scores, sum(truncated for _, truncated in fitted)
