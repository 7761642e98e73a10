"""WikiText-2 perplexity and bits per byte with (sliding) windows that score every token once."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks.config import WikitextPerplexityConfig
from lmforge.tasks.data import load_text
from lmforge.tasks.modeling import boundary_token_id, load_model, load_tokenizer, max_positions, write_json


def plan_windows(num_ids: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window: the window is ids[begin:end] and it scores targets
    first_target..end-1, so every id after the first is scored exactly once, with up to
    max_length - 1 tokens of context."""
    if not 1 <= stride < max_length:
        raise ValueError(f"stride must be in [1, max_length), got stride={stride} max_length={max_length}")
    windows, first_target = [], 1
    while first_target < num_ids:
        end = min(first_target + stride, num_ids)
        windows.append((max(0, end - max_length), end, first_target))
        first_target = end
    return windows


@torch.inference_mode()
def total_nll(model: Any, ids: list[int], max_length: int, stride: int, batch_size: int) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ids[1:] and the number of scored tokens."""
    windows = plan_windows(len(ids), max_length, stride)
    tokens = torch.tensor(ids, dtype=torch.long)
    nll, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(end - begin for begin, end, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (begin, end, first_target) in enumerate(chunk):
            input_ids[row, : end - begin] = tokens[begin:end]
            attention_mask[row, : end - begin] = 1
            labels[row, first_target - begin : end - begin] = tokens[first_target:end]
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Shift: the hidden state at t scores the token at t + 1. The LM head runs only where a
        # token is scored, which saves most of the vocabulary projection with a short stride.
        targets = labels[:, 1:]
        scored = targets != -100
        logits = model.get_output_embeddings()(hidden[:, :-1][scored]).float()
        nll += float(F.cross_entropy(logits, targets[scored], reduction="sum"))
        count += int(scored.sum())
    return nll, count


def run_wikitext_perplexity(
    config: WikitextPerplexityConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Token-weighted mean NLL over the whole text, its exp (perplexity) and bits per UTF-8 byte."""
    from transformers import AutoModelForCausalLM

    began = time.perf_counter()
    key = f"evaluation.tasks[{config.name}]"
    text = load_text(config.path, data_dir, f"{key}.path")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(AutoModelForCausalLM, model_dir)
    limit = max_positions(model.config)
    max_length = min(config.max_length or limit, limit)
    stride = config.stride or max_length - 1
    if stride >= max_length:
        raise ConfigError(f"{key}.stride: {stride} must be below the window length {max_length}")
    # Starting with the document-boundary token lets the model predict the first text token too,
    # so the NLL covers every byte of the text and bits per byte is exact.
    start = [token] if (token := boundary_token_id(tokenizer)) is not None else []
    ids = start + tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise DataError(f"{key}.path: the text tokenizes to fewer than two tokens")
    nll, num_tokens = total_nll(model, ids, max_length, stride, config.batch_size)
    mean_nll = nll / num_tokens
    num_bytes = len(text.encode("utf-8"))
    metrics = {
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else None,  # JSON has no inf
        "mean_nll": mean_nll,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "bits_per_byte": nll / math.log(2) / num_bytes,
        # Only exact when the first text token is scored too (a BOS/EOS token exists to predict it from).
        "bits_per_byte_covers_all_tokens": bool(start),
        "max_length": max_length,
        "stride": stride,
        "num_windows": len(plan_windows(len(ids), max_length, stride)),
        "seconds": time.perf_counter() - began,
    }
    write_json(output_dir / "metrics.json", metrics)
    return metrics
