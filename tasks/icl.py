"""SST-2 in-context learning: k demonstrations, each label word scored by log-likelihood (no generation)."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

from lmforge.errors import DataError
from lmforge.logs import get_logger
from tasks.config import Sst2IclConfig
from tasks.data import LabelledText, load_sst2
from tasks.modeling import boundary_token_id, load_model, load_tokenizer, max_positions, write_json
from tasks.scoring import ContinuationRequest, continuation_log_likelihoods

log = get_logger(__name__)
DEMONSTRATION_SEPARATOR = "\n\n"


def split_template(template: str) -> tuple[str, str]:
    """(prompt part up to the label with trailing whitespace removed, the whitespace before the label)."""
    before = template.split("{label}")[0]
    prompt = before.rstrip()
    return prompt, before[len(prompt) :]


def render_demonstration(template: str, row: LabelledText, label_words: dict[int, str]) -> str:
    # replace, not str.format: review text may hold braces.
    return template.replace("{text}", row.text).replace("{label}", label_words[row.label])


def build_prompt(
    config: Sst2IclConfig, demonstrations: list[LabelledText], text: str
) -> tuple[str, dict[int, str]]:
    """The context (demonstrations, then the query up to the label) and each label's continuation."""
    prompt, label_prefix = split_template(config.template)
    parts = [render_demonstration(config.template, row, config.label_words) for row in demonstrations]
    parts.append(prompt.replace("{text}", text))
    context = DEMONSTRATION_SEPARATOR.join(parts)
    return context, {label: label_prefix + word for label, word in config.label_words.items()}


def sample_demonstrations(train: list[LabelledText], k: int, seed: int, ordering: int) -> list[int]:
    """k distinct training rows in a random order, a fresh draw for each (seed, k, ordering)."""
    if k > len(train):
        raise DataError(f"sst2_icl: {k} demonstrations requested but the train split has {len(train)} rows")
    # A string seed hashes deterministically (sha512), unlike hash() of a tuple across processes.
    return random.Random(f"sst2_icl-{seed}-{k}-{ordering}").sample(range(len(train)), k)


def predict(
    model: Any,
    tokenizer: Any,
    config: Sst2IclConfig,
    demonstrations: list[LabelledText],
    dev: list[LabelledText],
    max_length: int,
) -> tuple[list[int], int]:
    """Argmax-likelihood label for each dev row; also how many prompts were left-truncated."""
    start = [token] if (token := boundary_token_id(tokenizer)) is not None else []
    labels = sorted(config.label_words)
    requests = []
    for row in dev:
        context, continuations = build_prompt(config, demonstrations, row.text)
        context_ids = start + tokenizer(context, add_special_tokens=False)["input_ids"]
        for label in labels:
            continuation_ids = tokenizer(continuations[label], add_special_tokens=False)["input_ids"]
            requests.append(ContinuationRequest(context_ids, continuation_ids))
    scores, num_truncated = continuation_log_likelihoods(model, requests, max_length, config.batch_size)
    predictions = []
    for index in range(len(dev)):
        row_scores = scores[index * len(labels) : (index + 1) * len(labels)]
        predictions.append(labels[max(range(len(labels)), key=row_scores.__getitem__)])
    return predictions, num_truncated // len(labels)


def summarize_shots(k: int, accuracies: list[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "mean_accuracy": statistics.fmean(accuracies),
        # Population standard deviation (ddof=0) over the orderings.
        "std_accuracy": statistics.pstdev(accuracies),
        "accuracies": accuracies,
    }
    if k == 0:
        summary["note"] = "k=0 has no demonstrations: every ordering is the same prompt, so std is 0"
    return summary


def run_sst2_icl(
    config: Sst2IclConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Accuracy per (k, ordering) and mean/std per k on the SST-2 dev set; writes metrics.json."""
    from transformers import AutoModelForCausalLM

    began = time.perf_counter()
    key = f"evaluation.tasks[{config.name}]"
    train = load_sst2(config.train_path, data_dir, f"{key}.train_path", "train")
    dev = load_sst2(config.dev_path, data_dir, f"{key}.dev_path", "validation")[: config.max_examples]
    tokenizer = load_tokenizer(model_dir)
    model = load_model(AutoModelForCausalLM, model_dir)
    max_length = min(config.max_length or max_positions(model.config), max_positions(model.config))
    gold = [row.label for row in dev]
    runs: list[dict[str, Any]] = []
    shots: dict[str, dict[str, Any]] = {}
    for k in config.shots:
        accuracies: list[float] = []
        for ordering in range(config.num_orderings):
            if k == 0 and ordering > 0:
                # Same prompts as ordering 0: scored once, reported for every ordering.
                accuracies.append(accuracies[0])
                runs.append({**runs[-1], "ordering": ordering})
                continue
            indices = sample_demonstrations(train, k, seed, ordering)
            predictions, num_truncated = predict(
                model, tokenizer, config, [train[i] for i in indices], dev, max_length
            )
            accuracy = sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(dev)
            accuracies.append(accuracy)
            runs.append(
                {
                    "k": k,
                    "ordering": ordering,
                    "accuracy": accuracy,
                    "demonstration_indices": indices,
                    "num_truncated": num_truncated,
                    "predicted_positive_fraction": sum(p == 1 for p in predictions) / len(dev),
                }
            )
            log.info("sst2_icl k=%d ordering=%d accuracy=%.4f", k, ordering, accuracy)
        shots[str(k)] = summarize_shots(k, accuracies)
    majority_label = max((0, 1), key=gold.count)
    metrics = {
        "num_examples": len(dev),
        "num_orderings": config.num_orderings,
        "max_length": max_length,
        "shots": shots,
        "runs": runs,
        "std_kind": "population standard deviation (ddof=0) over orderings",
        "majority_label": majority_label,
        "majority_baseline_accuracy": gold.count(majority_label) / len(dev),
        "seconds": time.perf_counter() - began,
    }
    write_json(output_dir / "metrics.json", metrics)
    return metrics
