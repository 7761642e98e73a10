"""SST-2 in-context learning: k demonstrations, each label word scored by log-likelihood (no generation).

A causal LM scores the label word as the prompt's continuation. An encoder-decoder (T5, from the
span objective) reads the same prompt in its encoder with the query's label slot replaced by the
sentinel `<extra_id_0>`, and scores the label word as the span that fills it, as span corruption
trained it to.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.tasks.config import Sst2IclConfig
from lmforge.tasks.data import LabelledText, load_sst2
from lmforge.tasks.modeling import (
    boundary_token_id,
    is_seq2seq,
    load_model,
    load_tokenizer,
    max_positions,
    write_metrics,
)
from lmforge.tasks.scoring import (
    ContinuationRequest,
    TargetRequest,
    continuation_log_likelihoods,
    target_log_likelihoods,
)

log = get_logger(__name__)
DEMONSTRATION_SEPARATOR = "\n\n"
SPAN_SENTINEL = "<extra_id_0>"
CAUSAL_SCORING = "argmax over labels of the label continuation's log-likelihood"
SPAN_FILL_SCORING = (
    f"argmax over labels of the log-likelihood of the label word's tokens as the decoder target "
    f"after {SPAN_SENTINEL}, the query's label slot being {SPAN_SENTINEL} in the encoder input"
)


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


def score_labels(
    model: Any,
    tokenizer: Any,
    config: Sst2IclConfig,
    demonstrations: list[LabelledText],
    texts: list[str],
    max_length: int | None,
) -> tuple[list[list[float]], int]:
    """Per text, the log-likelihood of each label (labels in sorted order); also how many prompts
    were left-truncated to max_length tokens (None: no limit, encoder-decoders only)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return score_span_fill_labels(model, tokenizer, config, demonstrations, texts, max_length)
    if max_length is None:
        raise ValueError("a causal LM's prompts need a max_length")
    start = [token] if (token := boundary_token_id(tokenizer)) is not None else []
    labels = sorted(config.label_words)
    requests = []
    for text in texts:
        context, continuations = build_prompt(config, demonstrations, text)
        context_ids = start + tokenizer(context, add_special_tokens=False)["input_ids"]
        for label in labels:
            continuation_ids = tokenizer(continuations[label], add_special_tokens=False)["input_ids"]
            requests.append(ContinuationRequest(context_ids, continuation_ids))
    scores, num_truncated = continuation_log_likelihoods(model, requests, max_length, config.batch_size)
    per_text = [scores[i : i + len(labels)] for i in range(0, len(scores), len(labels))]
    return per_text, num_truncated // len(labels)


def span_fill_encoder_ids(
    tokenizer: Any, config: Sst2IclConfig, demonstrations: list[LabelledText], text: str, sentinel_id: int
) -> list[int]:
    """The prompt of `build_prompt` (demonstrations, then the query up to its label) followed by the
    sentinel and </s>: the whitespace before the query's label goes with the label word, whose
    first piece carries the word-start marker, as in a span target."""
    context, _ = build_prompt(config, demonstrations, text)
    return [*tokenizer(context, add_special_tokens=False)["input_ids"], sentinel_id, tokenizer.eos_token_id]


def score_span_fill_labels(
    model: Any,
    tokenizer: Any,
    config: Sst2IclConfig,
    demonstrations: list[LabelledText],
    texts: list[str],
    max_length: int | None,
) -> tuple[list[list[float]], int]:
    """`score_labels` for an encoder-decoder: per label, the summed log-probability of the label
    word's tokens (`tokenizer(word, add_special_tokens=False)`) as the decoder target after the
    decoder start token and `<extra_id_0>`; neither the sentinel nor a closing </s> is scored.
    Prompts over max_length tokens lose tokens from the left (the sentinel and </s> stay)."""
    sentinel_id = tokenizer.convert_tokens_to_ids(SPAN_SENTINEL)
    if sentinel_id is None or sentinel_id == tokenizer.unk_token_id or tokenizer.eos_token_id is None:
        raise ArtifactError(f"span-fill scoring needs a tokenizer with {SPAN_SENTINEL} and an eos token")
    labels = sorted(config.label_words)
    words = {
        label: tokenizer(config.label_words[label], add_special_tokens=False)["input_ids"] for label in labels
    }
    requests, num_truncated = [], 0
    for text in texts:
        encoder_ids = span_fill_encoder_ids(tokenizer, config, demonstrations, text, sentinel_id)
        if max_length is not None and len(encoder_ids) > max_length:
            encoder_ids, num_truncated = encoder_ids[-max_length:], num_truncated + 1
        requests += [TargetRequest(encoder_ids, [sentinel_id], words[label]) for label in labels]
    scores = target_log_likelihoods(model, requests, config.batch_size)
    return [scores[i : i + len(labels)] for i in range(0, len(scores), len(labels))], num_truncated


def log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    log_total = top + math.log(sum(math.exp(value - top) for value in values))
    return [value - log_total for value in values]


def log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(statistics.fmean(math.exp(value - top) for value in values))


def content_free_log_prior(content_free_scores: list[list[float]]) -> list[float]:
    """log of the label distribution for content-free inputs, each renormalized over the labels and
    averaged in probability space (Zhao et al. 2021); kept in log space so nothing underflows."""
    distributions = [log_softmax(scores) for scores in content_free_scores]
    return [log_mean_exp(list(column)) for column in zip(*distributions, strict=True)]


def calibrate(scores: list[list[float]], log_prior: list[float]) -> list[list[float]]:
    """log(p(label) / prior(label)), p renormalized over the labels: contextual calibration with
    W = diag(prior)^-1 and b = 0; its argmax is the calibrated prediction."""
    return [[a - b for a, b in zip(log_softmax(row), log_prior, strict=True)] for row in scores]


def argmax_labels(scores: list[list[float]]) -> list[int]:
    return [max(range(len(row)), key=row.__getitem__) for row in scores]


def outcome(prefix: str, predictions: list[int], gold: list[int]) -> dict[str, float]:
    return {
        f"{prefix}accuracy": sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(gold),
        f"{prefix}predicted_positive_fraction": sum(p == 1 for p in predictions) / len(gold),
    }


def evaluate_ordering(
    model: Any,
    tokenizer: Any,
    config: Sst2IclConfig,
    demonstrations: list[LabelledText],
    dev: list[LabelledText],
    max_length: int | None,
) -> dict[str, Any]:
    """Raw (and, with config.calibrate, calibrated) accuracy for one set of demonstrations."""
    labels = sorted(config.label_words)
    texts = [row.text for row in dev]
    scores, num_truncated = score_labels(model, tokenizer, config, demonstrations, texts, max_length)
    gold = [row.label for row in dev]
    result: dict[str, Any] = {"num_truncated": num_truncated, **outcome("", argmax_labels(scores), gold)}
    if config.calibrate:
        content_free, _ = score_labels(
            model, tokenizer, config, demonstrations, config.content_free_texts, max_length
        )
        log_prior = content_free_log_prior(content_free)
        words = [config.label_words[label] for label in labels]
        result["content_free_prior"] = {w: math.exp(p) for w, p in zip(words, log_prior, strict=True)}
        result.update(outcome("calibrated_", argmax_labels(calibrate(scores, log_prior)), gold))
    return result


def summarize_shots(k: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population standard deviation (ddof=0) over the orderings, raw and calibrated."""
    summary: dict[str, Any] = {}
    for prefix in ("", "calibrated_"):
        if f"{prefix}accuracy" in runs[0]:
            accuracies = [run[f"{prefix}accuracy"] for run in runs]
            summary[f"{prefix}mean_accuracy"] = statistics.fmean(accuracies)
            summary[f"{prefix}std_accuracy"] = statistics.pstdev(accuracies)
            summary[f"{prefix}accuracies"] = accuracies
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
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    train = load_sst2(config.train_path, data_dir, f"{key}.train_path", "train")
    dev = load_sst2(config.dev_path, data_dir, f"{key}.dev_path", "validation")[: config.max_examples]
    tokenizer = load_tokenizer(model_dir)
    seq2seq = is_seq2seq(model_dir)
    model = load_model(AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM, model_dir)
    max_length: int | None
    if seq2seq:  # relative position buckets: no maximum input length
        max_length = config.max_length
    else:
        max_length = min(config.max_length or max_positions(model.config), max_positions(model.config))
    gold = [row.label for row in dev]
    runs: list[dict[str, Any]] = []
    shots: dict[str, dict[str, Any]] = {}
    for k in config.shots:
        for ordering in range(config.num_orderings):
            if k == 0 and ordering > 0:
                # Same prompts as ordering 0: scored once, reported for every ordering.
                runs.append({**runs[-1], "ordering": ordering})
                continue
            indices = sample_demonstrations(train, k, seed, ordering)
            demonstrations = [train[i] for i in indices]
            result = evaluate_ordering(model, tokenizer, config, demonstrations, dev, max_length)
            runs.append({"k": k, "ordering": ordering, "demonstration_indices": indices, **result})
            log.info(
                "sst2_icl k=%d ordering=%d accuracy=%.4f calibrated=%s",
                k,
                ordering,
                result["accuracy"],
                result.get("calibrated_accuracy"),
            )
        shots[str(k)] = summarize_shots(k, [run for run in runs if run["k"] == k])
    majority_label = max((0, 1), key=gold.count)
    metrics = {
        "num_examples": len(dev),
        "num_orderings": config.num_orderings,
        "max_length": max_length,
        "shots": shots,
        "runs": runs,
        "std_kind": "population standard deviation (ddof=0) over orderings",
        "scoring": SPAN_FILL_SCORING if seq2seq else CAUSAL_SCORING,
        "majority_label": majority_label,
        "majority_baseline_accuracy": gold.count(majority_label) / len(dev),
    }
    if config.calibrate:
        metrics["calibration"] = (
            "contextual calibration (Zhao et al. 2021): label probabilities renormalized over the labels, "
            f"divided by their mean over the content-free texts {config.content_free_texts} with the same "
            "demonstrations"
        )
    return write_metrics(output_dir, metrics, time.perf_counter() - began)
