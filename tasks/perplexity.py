"""WikiText-2 perplexity with sliding (or chunked) windows that score every token once, and bits
per byte where the byte count is exactly what was scored."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks.config import PerplexityConfig, WikitextPerplexityConfig
from lmforge.tasks.data import load_text
from lmforge.tasks.modeling import boundary_token_id, load_model, load_tokenizer, max_positions, write_metrics

Window = tuple[int, int, int]


def plan_windows(num_ids: int, max_length: int, stride: int) -> list[Window]:
    """(begin, end, first_target) per window: the model reads ids[begin:end-1] and scores targets
    first_target..end-1, so every id after the first is scored exactly once.

    The first window scores up to max_length targets with all the context there is; each later one
    moves on by `stride` and scores `stride` new targets, target t seeing the t - begin tokens
    ids[begin:t] (max_length - stride + 1 for its first target, max_length for its last).
    stride == max_length is the chunked evaluation: consecutive windows read disjoint tokens.
    """
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length], got stride={stride} max_length={max_length}")
    windows: list[Window] = []
    first_target = 1
    while first_target < num_ids:
        scored = max_length if first_target == 1 else stride
        end = min(first_target + scored, num_ids)
        windows.append((first_target - 1 - (max_length - scored), end, first_target))
        first_target = end
    return windows


def count_without_full_context(windows: list[Window], max_length: int) -> int:
    """Targets that saw fewer tokens than min(position, max_length), the most any window allows."""
    return sum(
        1
        for begin, end, first in windows
        for target in range(first, end)
        if target - begin < min(target, max_length)
    )


@torch.inference_mode()
def total_nll(model: Any, ids: list[int], max_length: int, stride: int, batch_size: int) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ids[1:] and the number of scored tokens."""
    windows = plan_windows(len(ids), max_length, stride)
    tokens = torch.tensor(ids, dtype=torch.long)
    nll, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(end - 1 - begin for begin, end, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        # targets[row, j] is the token the hidden state at input position j predicts, or -100.
        targets = torch.full_like(input_ids, -100)
        for row, (begin, end, first_target) in enumerate(chunk):
            input_ids[row, : end - 1 - begin] = tokens[begin : end - 1]
            attention_mask[row, : end - 1 - begin] = 1
            targets[row, first_target - 1 - begin : end - 1 - begin] = tokens[first_target:end]
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scored = targets != -100
        # The LM head runs only where a token is scored: most positions with a short stride are not.
        logits = model.get_output_embeddings()(hidden[scored]).float()
        losses = F.cross_entropy(logits, targets[scored], reduction="none")
        nll += float(losses.double().sum())  # float64 sums: 10^5+ tokens lose digits in float32
        count += int(scored.sum())
    return nll, count


def bits_per_byte_inexact_reason(
    tokenizer: Any, text: str, text_ids: list[int], first_scored: bool
) -> str | None:
    """Why the scored tokens do not stand for exactly the text's bytes, or None when they do."""
    reasons = []
    if not first_scored:
        reasons.append("no BOS/EOS token to predict the first text token from, so its bytes are not scored")
    decoded = tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded != text:
        # Normalizers (lowercasing, NFKC), unknown tokens and added prefix spaces all land here.
        offset = len(os.path.commonprefix([decoded, text]))
        reasons.append(
            f"the tokenizer does not round-trip the text (decode(encode(text)) differs at character {offset})"
        )
    return "; ".join(reasons) or None


def window_settings(
    config: WikitextPerplexityConfig | PerplexityConfig, limit: int, key: str
) -> tuple[int, int]:
    """(max_length, stride): the window is capped at the model's positions; stride defaults to half of it."""
    max_length = min(config.max_length or limit, limit)
    # Half a window: every token past the first window sees at least half a window of context, for
    # twice the compute of chunked windows.
    stride = config.stride or max(1, max_length // 2)
    if stride > max_length:
        raise ConfigError(
            f"{key}.stride: {stride} exceeds the window length {max_length} (model limit {limit})"
        )
    return max_length, stride


def run_wikitext_perplexity(
    config: WikitextPerplexityConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Token-weighted mean NLL over the whole text, its exp (perplexity) and, where exact, bits per byte."""
    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    text = load_text(config.path, data_dir, f"{key}.path")
    metrics = text_perplexity(config, model_dir, text, key)
    return write_metrics(output_dir, metrics, time.perf_counter() - began)


def run_perplexity(
    config: PerplexityConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Perplexity and bits per byte of any text source: a plain text file scored as one text, or a
    table's text column (documents joined by a blank line), cut to max_documents / max_characters."""
    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    text, num_documents = load_any_text(config, data_dir, key)
    metrics = text_perplexity(config, model_dir, text, key)
    metrics.update({"source": config.path, "num_documents": num_documents, "num_characters": len(text)})
    return write_metrics(output_dir, metrics, time.perf_counter() - began)


TEXT_SUFFIXES = (".txt", ".raw", ".text")


def load_any_text(config: PerplexityConfig, data_dir: Path | None, key: str) -> tuple[str, int | None]:
    """(the text to score, how many documents it joins; None for a plain text file)."""
    from lmforge.infra.data_paths import is_hf_uri, resolve_file
    from lmforge.tasks.readers import column_name, read_table

    plain = config.format == "text" or (
        config.format == "auto" and not is_hf_uri(config.path) and config.path.lower().endswith(TEXT_SUFFIXES)
    )
    if plain:
        text = (
            resolve_file(config.path, data_dir, f"{key}.path")
            .read_text(encoding="utf-8")
            .replace("\r\n", "\n")
        )
        num_documents = None
    else:
        table = read_table(config.path, data_dir, f"{key}.path", format=config.format, split=config.split)
        column = column_name(table, config.text_column, f"{key}.text_column")
        documents = [str(row[column]).strip() for row in table.rows if row.get(column) is not None]
        documents = [doc for doc in documents if doc][: config.max_documents]
        text, num_documents = DOCUMENT_SEPARATOR.join(documents), len(documents)
    if config.max_characters is not None:
        text = text[: config.max_characters]
    if not text.strip():
        raise DataError(f"{key}.path: {config.path!r} holds no text")
    return text, num_documents


DOCUMENT_SEPARATOR = "\n\n"


def text_perplexity(config: Any, model_dir: Path, text: str, key: str) -> dict[str, Any]:
    """Perplexity of a causal LM on `text` with the config's window and stride."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    model = load_model(AutoModelForCausalLM, model_dir)
    max_length, stride = window_settings(config, max_positions(model.config), key)
    # Starting with the document-boundary token lets the model predict the first text token too.
    start = [token] if (token := boundary_token_id(tokenizer)) is not None else []
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = start + text_ids
    if len(ids) < 2:
        raise DataError(f"{key}.path: the text tokenizes to fewer than two tokens")
    nll, num_scored = total_nll(model, ids, max_length, stride, config.batch_size)
    windows = plan_windows(len(ids), max_length, stride)
    mean_nll = nll / num_scored
    num_bytes = len(text.encode("utf-8"))
    inexact = bits_per_byte_inexact_reason(tokenizer, text, text_ids, first_scored=bool(start))
    return {
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else None,  # JSON has no inf
        "mean_nll": mean_nll,
        "num_scored_tokens": num_scored,
        "num_bytes": num_bytes,
        "bits_per_byte": None if inexact else nll / math.log(2) / num_bytes,
        "bits_per_byte_unavailable_reason": inexact,
        "max_length": max_length,
        "stride": stride,
        "window": "chunked" if stride == max_length else "sliding",
        "num_windows": len(windows),
        "num_tokens_without_full_context": count_without_full_context(windows, max_length),
    }
