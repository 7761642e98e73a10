"""Masked-token accuracy and loss of an MLM on the validation shards, with a fixed masking seed.

Masking for the metric is deliberately simple: a seeded 15% of the non-special tokens of each
sequence are all replaced by [MASK] (no 80/10/10 random/keep split, which only matters for
training), and the model must recover the original token at exactly those positions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.tasks.config import MlmAccuracyConfig
from lmforge.tasks.data import read_validation_sequences
from lmforge.tasks.modeling import load_model, load_tokenizer, max_positions, write_metrics


def mask_sequences(
    input_ids: np.ndarray, special_ids: set[int], mask_id: int, probability: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(masked ids, boolean mask of selected positions); each non-special token independently."""
    rng = np.random.default_rng(seed)
    candidates = ~np.isin(input_ids, list(special_ids))
    selected = candidates & (rng.random(input_ids.shape) < probability)
    return np.where(selected, mask_id, input_ids), selected


@torch.inference_mode()
def masked_prediction_stats(
    model: Any, masked: np.ndarray, original: np.ndarray, selected: np.ndarray, batch_size: int
) -> tuple[int, float, int]:
    """(correct argmax predictions, summed cross-entropy in nats, number of masked tokens)."""
    correct, loss_sum, count = 0, 0.0, 0
    for start in range(0, len(masked), batch_size):
        rows = slice(start, start + batch_size)
        chosen = torch.from_numpy(selected[rows])
        if not chosen.any():
            continue
        logits = masked_logits(model, torch.from_numpy(masked[rows]), chosen).float()
        targets = torch.from_numpy(original[rows])[chosen]
        correct += int((logits.argmax(-1) == targets).sum())
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += int(chosen.sum())
    return correct, loss_sum, count


def masked_logits(model: Any, input_ids: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits at the chosen positions only, shape (num_chosen, vocab)."""
    head = getattr(model, "cls", None)
    if head is None:
        # Architectures without BERT's `cls` head: full forward, then pick the masked positions.
        return model(input_ids=input_ids).logits[chosen]
    # BertForMaskedLM: `cls` is transform + decoder. Running it on the ~15% masked positions only
    # skips most of the vocabulary projection.
    hidden = model.base_model(input_ids=input_ids).last_hidden_state
    return head(hidden[chosen])


def run_mlm_accuracy(
    config: MlmAccuracyConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Accuracy and mean loss at masked positions of the validation shards; writes metrics.json."""
    from transformers import AutoModelForMaskedLM

    began = time.perf_counter()
    if shards_dir is None:
        raise ConfigError(f"evaluation.tasks[{config.id}]: needs the shards directory of the run")
    sequences = read_validation_sequences(Path(shards_dir), config.max_sequences)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.mask_token_id is None:
        raise ArtifactError(f"{model_dir}: the tokenizer defines no mask token")
    model = load_model(AutoModelForMaskedLM, model_dir)
    if sequences.shape[1] > max_positions(model.config):
        raise ArtifactError(
            f"{shards_dir}: sequences of {sequences.shape[1]} tokens exceed the model's "
            f"{max_positions(model.config)} positions"
        )
    masked, selected = mask_sequences(
        sequences,
        set(tokenizer.all_special_ids),
        tokenizer.mask_token_id,
        config.mask_probability,
        config.mask_seed,
    )
    correct, loss_sum, count = masked_prediction_stats(model, masked, sequences, selected, config.batch_size)
    if count == 0:
        raise ArtifactError(f"{shards_dir}: no token was masked; the validation split is too small")
    metrics = {
        "accuracy": correct / count,
        "masked_loss": loss_sum / count,
        "masked_perplexity": math.exp(loss_sum / count) if loss_sum / count < 700 else None,
        "num_masked_tokens": count,
        "num_sequences": int(len(sequences)),
        "seq_len": int(sequences.shape[1]),
        "mask_probability": config.mask_probability,
        "mask_seed": config.mask_seed,
        "masking": "selected non-special tokens all replaced by the mask token (no 80/10/10)",
    }
    return write_metrics(output_dir, metrics, time.perf_counter() - began)
