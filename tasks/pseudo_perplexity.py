"""WikiText-2 pseudo-perplexity of a masked LM: each token masked on its own and scored from both sides.

Pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"): for every text token
w_t, mask that token alone and take log p(w_t | the rest of its window); PLL is the sum over tokens
and pseudo-perplexity exp(-PLL / N). It is the standard MLM counterpart of perplexity, but not
comparable with a causal LM's perplexity in absolute terms: each factor conditions on both sides,
and the factors do not multiply to a normalised distribution over texts.

Windows. The text (tokenized without specials) is read in windows of `body` tokens, each wrapped in
[CLS] ... [SEP] as the MLM packer wraps training sequences, so a window is the model's max length.
Each window scores `stride` new tokens in its middle, `left` = (body - stride) // 2 tokens after its
start; the first window also scores its head and the last window (aligned to the text's end) its
tail. Every token is scored exactly once and sees min(t, left) tokens before it and
min(N - 1 - t, right) after it, right = body - stride - left. Every scored token costs one forward of
one window whatever the stride, so stride 1 (each token at its window's centre) is the default.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.configbase import identity_view
from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.tasks.config import WikitextPseudoPerplexityConfig
from lmforge.tasks.data import load_text
from lmforge.tasks.mlm_accuracy import masked_logits
from lmforge.tasks.modeling import load_model, load_tokenizer, max_positions, write_metrics

# (begin, end, first_target, end_target): the window reads ids[begin:end] and scores
# ids[first_target:end_target].
Window = tuple[int, int, int, int]


def plan_windows(num_ids: int, body: int, stride: int, num_targets: int | None = None) -> list[Window]:
    """Windows of `body` ids that score each of the first `num_targets` ids (default all) once."""
    if not 1 <= stride <= body:
        raise ValueError(f"stride must be in [1, body], got stride={stride} body={body}")
    limit = num_ids if num_targets is None else min(num_targets, num_ids)
    if num_ids <= body:
        return [(0, num_ids, 0, limit)] if limit > 0 else []
    left = (body - stride) // 2
    right = body - stride - left
    windows: list[Window] = []
    first = 0
    while first < limit:
        # The last window ends at the text's end, so it scores the tail with all the context there is.
        begin = 0 if first == 0 else min(first - left, num_ids - body)
        end = begin + body
        end_target = num_ids if end == num_ids else end - right
        windows.append((begin, end, first, min(end_target, limit)))
        first = end_target
    return windows


def wrapper_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids around each window: [CLS] / [SEP] when the tokenizer names both (the MLM
    packer's wrapping), else whatever its post-processor puts around a single text."""
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return [int(tokenizer.cls_token_id)], [int(tokenizer.sep_token_id)]
    # The mask token encodes to exactly its own id, which locates the text between the wrappers.
    wrapped = tokenizer(tokenizer.mask_token, add_special_tokens=True)["input_ids"]
    at = wrapped.index(tokenizer.mask_token_id)
    return list(wrapped[:at]), list(wrapped[at + 1 :])


@torch.inference_mode()
def pseudo_log_likelihood(
    model: Any,
    ids: list[int],
    windows: list[Window],
    wrappers: tuple[list[int], list[int]],
    mask_id: int,
    batch_size: int,
) -> tuple[float, int]:
    """(summed log p(token | its window with only it masked), number of scored tokens).

    Rows are the masked copies of the windows, one per scored token, `batch_size` to a forward; all
    windows have the same width, so rows need no padding.
    """
    if not windows:
        return 0.0, 0
    prefix, suffix = (torch.tensor(part, dtype=torch.long) for part in wrappers)
    tokens = torch.tensor(ids, dtype=torch.long)
    begins = torch.tensor([begin for begin, _, first, end in windows for _ in range(first, end)])
    targets = torch.tensor([t for _, _, first, end in windows for t in range(first, end)])
    width = windows[0][1] - windows[0][0]
    assert all(end - begin == width for begin, end, _, _ in windows), "windows differ in width"
    offsets = torch.arange(width)
    total = 0.0
    for start in range(0, len(targets), batch_size):
        row_begins, row_targets = begins[start : start + batch_size], targets[start : start + batch_size]
        rows = torch.arange(len(row_targets))
        body = tokens[row_begins[:, None] + offsets]
        body[rows, row_targets - row_begins] = mask_id
        input_ids = torch.cat([prefix.expand(len(rows), -1), body, suffix.expand(len(rows), -1)], dim=1)
        chosen = torch.zeros_like(input_ids, dtype=torch.bool)
        chosen[rows, len(prefix) + row_targets - row_begins] = True
        log_probs = F.log_softmax(masked_logits(model, input_ids, chosen).float(), dim=-1)
        # float64 sums: 10^5+ tokens lose digits in float32.
        total += float(log_probs[rows, tokens[row_targets]].double().sum())
    return total, len(targets)


def window_settings(
    config: WikitextPseudoPerplexityConfig, limit: int, num_wrappers: int, key: str
) -> tuple[int, int]:
    """(max_length, body): the window is capped at the model's positions; body leaves room for wrappers."""
    max_length = min(config.max_length or limit, limit)
    body = max_length - num_wrappers
    if body < 1:
        raise ConfigError(
            f"{key}.max_length: {max_length} leaves no room for text after {num_wrappers} wrappers"
        )
    if config.stride > body:
        raise ConfigError(
            f"{key}.stride: {config.stride} exceeds the {body} text tokens of a window "
            f"(max_length {max_length} less {num_wrappers} wrapper tokens; model limit {limit})"
        )
    return max_length, body


def run_wikitext_pseudo_perplexity(
    config: WikitextPseudoPerplexityConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Pseudo-log-likelihood of the (first max_tokens) WikiText tokens and its pseudo-perplexity."""
    from transformers import AutoModelForMaskedLM

    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    text = load_text(config.path, data_dir, f"{key}.path")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.mask_token_id is None:
        raise ArtifactError(f"{model_dir}: the tokenizer defines no mask token")
    model = load_model(AutoModelForMaskedLM, model_dir)
    wrappers = wrapper_ids(tokenizer)
    max_length, body = window_settings(
        config, max_positions(model.config), len(wrappers[0]) + len(wrappers[1]), key
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"{key}.path: the text tokenizes to no tokens")
    windows = plan_windows(len(ids), body, config.stride, config.max_tokens)
    pll, num_tokens = pseudo_log_likelihood(
        model, ids, windows, wrappers, tokenizer.mask_token_id, config.batch_size
    )
    mean_nll = -pll / num_tokens
    metrics = {
        "pseudo_perplexity": math.exp(mean_nll) if mean_nll < 700 else None,  # JSON has no inf
        "pseudo_log_likelihood": pll,
        "mean_negative_pll": mean_nll,
        "num_tokens": num_tokens,
        "num_text_tokens": len(ids),
        "max_length": max_length,
        "window_text_tokens": min(body, len(ids)),
        "num_windows": len(windows),
        "wrappers": tokenizer.convert_ids_to_tokens(wrappers[0] + wrappers[1]),
        "config": identity_view(config),
    }
    return write_metrics(output_dir, metrics, time.perf_counter() - began)
