"""In-context classification: k demonstrations, each label's word scored by log-likelihood (no
generation). `icl_classification` reads any classification data set (one text or a pair, any
number of labels, multi-token label words); `sst2_icl` is its SST-2 preset.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.tasks.config import IclClassificationConfig, Sst2IclConfig
from lmforge.tasks.data import load_sst2
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


def fill(template: str, text: str, text_pair: str | None) -> str:
    # replace, not str.format: the texts may hold braces.
    return template.replace("{text}", text).replace("{text_pair}", text_pair or "")


def render_demonstration(template: str, row: Any, label_words: dict[int, str]) -> str:
    return fill(template, row.text, getattr(row, "text_pair", None)).replace(
        "{label}", label_words[row.label]
    )


def build_prompt(config: Any, demonstrations: list[Any], query: str | Any) -> tuple[str, dict[int, str]]:
    """The context (demonstrations, then the query up to the label) and each label's continuation.

    `query`: the query's text, or a row with `text` (and `text_pair`)."""
    text, text_pair = (
        (query, query) if isinstance(query, str) else (query.text, getattr(query, "text_pair", None))
    )
    prompt, label_prefix = split_template(config.template)
    parts = [render_demonstration(config.template, row, config.label_words) for row in demonstrations]
    parts.append(fill(prompt, text, text_pair))
    context = DEMONSTRATION_SEPARATOR.join(parts)
    return context, {label: label_prefix + word for label, word in config.label_words.items()}


def sample_demonstrations(train: list[Any], k: int, seed: int, ordering: int) -> list[int]:
    """k distinct training rows in a random order, a fresh draw for each (seed, k, ordering)."""
    if k > len(train):
        raise DataError(
            f"in-context learning: {k} demonstrations requested but the train split has {len(train)} rows"
        )
    # A string seed hashes deterministically (sha512), unlike hash() of a tuple across processes.
    return random.Random(f"sst2_icl-{seed}-{k}-{ordering}").sample(range(len(train)), k)


def score_labels(
    model: Any,
    tokenizer: Any,
    config: Any,
    demonstrations: list[Any],
    texts: list[str] | list[Any],
    max_length: int | None,
) -> tuple[list[list[float]], int]:
    """Per query (a text, or a row with text and text_pair), the log-likelihood of each label
    (labels in sorted order), summed over the label word's tokens or, with `scoring: mean`, per
    token; also how many prompts were left-truncated to max_length tokens (None: no limit,
    encoder-decoders only)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return score_span_fill_labels(model, tokenizer, config, demonstrations, texts, max_length)
    if max_length is None:
        raise ValueError("a causal LM's prompts need a max_length")
    start = [token] if (token := boundary_token_id(tokenizer)) is not None else []
    labels = sorted(config.label_words)
    requests, lengths = [], []
    for text in texts:
        context, continuations = build_prompt(config, demonstrations, text)
        context_ids = start + tokenizer(context, add_special_tokens=False)["input_ids"]
        for label in labels:
            continuation_ids = tokenizer(continuations[label], add_special_tokens=False)["input_ids"]
            requests.append(ContinuationRequest(context_ids, continuation_ids))
            lengths.append(len(continuation_ids))
    scores, num_truncated = continuation_log_likelihoods(model, requests, max_length, config.batch_size)
    scores = normalized(scores, lengths, config)
    per_text = [scores[i : i + len(labels)] for i in range(0, len(scores), len(labels))]
    return per_text, num_truncated // len(labels)


def normalized(scores: list[float], lengths: list[int], config: Any) -> list[float]:
    """Summed log-likelihoods, or per token with `scoring: mean` (length-normalized)."""
    if getattr(config, "scoring", "sum") == "mean":
        return [score / max(1, length) for score, length in zip(scores, lengths, strict=True)]
    return scores


def span_fill_encoder_ids(
    tokenizer: Any, config: Any, demonstrations: list[Any], text: str | Any, sentinel_id: int
) -> list[int]:
    """The prompt of `build_prompt` (demonstrations, then the query up to its label) followed by the
    sentinel and </s>: the whitespace before the query's label goes with the label word, whose
    first piece carries the word-start marker, as in a span target."""
    context, _ = build_prompt(config, demonstrations, text)
    return [*tokenizer(context, add_special_tokens=False)["input_ids"], sentinel_id, tokenizer.eos_token_id]


def score_span_fill_labels(
    model: Any,
    tokenizer: Any,
    config: Any,
    demonstrations: list[Any],
    texts: list[str] | list[Any],
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
    scores = normalized(scores, [len(words[label]) for _ in texts for label in labels], config)
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


def outcome(prefix: str, predictions: list[int], gold: list[int], num_labels: int = 2) -> dict[str, float]:
    """Accuracy (and macro-F1 for more than two labels); for two labels, how often label 1 was
    predicted (a prompt that always answers one word shows here)."""
    result = {f"{prefix}accuracy": sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(gold)}
    if num_labels == 2:
        result[f"{prefix}predicted_positive_fraction"] = sum(p == 1 for p in predictions) / len(gold)
    else:
        from lmforge.tasks.classification import classification_metrics

        result[f"{prefix}macro_f1"] = classification_metrics(predictions, gold, num_labels)["macro_f1"]
    return result


def evaluate_ordering(
    model: Any,
    tokenizer: Any,
    config: Any,
    demonstrations: list[Any],
    dev: list[Any],
    max_length: int | None,
) -> dict[str, Any]:
    """Raw (and, with config.calibrate, calibrated) accuracy for one set of demonstrations."""
    labels = sorted(config.label_words)
    queries = [row if getattr(row, "text_pair", None) is not None else row.text for row in dev]
    scores, num_truncated = score_labels(model, tokenizer, config, demonstrations, queries, max_length)
    gold = [row.label for row in dev]
    n = len(labels)
    result: dict[str, Any] = {"num_truncated": num_truncated, **outcome("", argmax_labels(scores), gold, n)}
    if config.calibrate:
        # A pair template gets the content-free text in both slots.
        content_free, _ = score_labels(
            model, tokenizer, config, demonstrations, list(config.content_free_texts), max_length
        )
        log_prior = content_free_log_prior(content_free)
        words = [config.label_words[label] for label in labels]
        result["content_free_prior"] = {w: math.exp(p) for w, p in zip(words, log_prior, strict=True)}
        result.update(outcome("calibrated_", argmax_labels(calibrate(scores, log_prior)), gold, n))
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


@dataclass(frozen=True)
class IclView:
    """What the scoring functions read of an ICL config, with label words keyed by class index."""

    template: str
    label_words: dict[int, str]
    batch_size: int
    calibrate: bool
    content_free_texts: list[str]
    scoring: str = "sum"


@dataclass(frozen=True)
class Demonstration:
    text: str
    text_pair: str | None
    label: int


def relabel(rows: list[Any], num_labels: int, seed: str) -> list[Demonstration]:
    """The demonstrations with their labels drawn uniformly at random (inputs kept): does the model
    learn the input-label mapping from them, or only the format (Min et al. 2022)?"""
    rng = random.Random(seed)
    return [
        Demonstration(row.text, getattr(row, "text_pair", None), rng.randrange(num_labels)) for row in rows
    ]


def evaluate_shots(
    model: Any,
    tokenizer: Any,
    view: Any,
    train: list[Any],
    dev: list[Any],
    shots: list[int],
    num_orderings: int,
    seed: int,
    max_length: int | None,
    random_labels: bool = False,
    name: str = "icl",
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every (k, ordering): demonstrations drawn, the dev set scored; then mean/std per k."""
    runs: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    for k in shots:
        for ordering in range(num_orderings):
            if k == 0 and ordering > 0:
                # Same prompts as ordering 0: scored once, reported for every ordering.
                runs.append({**runs[-1], "ordering": ordering})
                continue
            indices = sample_demonstrations(train, k, seed, ordering)
            demonstrations = [train[i] for i in indices]
            extra: dict[str, Any] = {}
            if random_labels and k > 0:
                demonstrations = relabel(
                    demonstrations, len(view.label_words), f"{name}-random-labels-{seed}-{k}-{ordering}"
                )
                extra["demonstration_labels"] = [row.label for row in demonstrations]
            result = evaluate_ordering(model, tokenizer, view, demonstrations, dev, max_length)
            runs.append({"k": k, "ordering": ordering, "demonstration_indices": indices, **extra, **result})
            log.info(
                "%s k=%d ordering=%d accuracy=%.4f calibrated=%s",
                name,
                k,
                ordering,
                result["accuracy"],
                result.get("calibrated_accuracy"),
            )
        summaries[str(k)] = summarize_shots(k, [run for run in runs if run["k"] == k])
    return runs, summaries


def load_icl_model(model_dir: Path, configured_max_length: int | None) -> tuple[Any, Any, bool, int | None]:
    """(model, tokenizer, is encoder-decoder, prompt length limit)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = load_tokenizer(model_dir)
    seq2seq = is_seq2seq(model_dir)
    model = load_model(AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM, model_dir)
    if seq2seq:  # relative position buckets: no maximum input length
        return model, tokenizer, True, configured_max_length
    limit = max_positions(model.config)
    return model, tokenizer, False, min(configured_max_length or limit, limit)


def icl_metrics(
    config: Any,
    runs: list[dict[str, Any]],
    shots: dict[str, Any],
    gold: list[int],
    seq2seq: bool,
    max_length: int | None,
) -> dict[str, Any]:
    labels = sorted(set(gold))
    majority_label = max(labels, key=gold.count)
    metrics = {
        "num_examples": len(gold),
        "num_orderings": config.num_orderings,
        "max_length": max_length,
        "shots": shots,
        "runs": runs,
        "std_kind": "population standard deviation (ddof=0) over orderings",
        "scoring": (SPAN_FILL_SCORING if seq2seq else CAUSAL_SCORING)
        + (
            "; per token of the label word (length-normalized)"
            if getattr(config, "scoring", "sum") == "mean"
            else ""
        ),
        "majority_label": majority_label,
        "majority_baseline_accuracy": gold.count(majority_label) / len(gold),
    }
    if config.calibrate:
        metrics["calibration"] = (
            "contextual calibration (Zhao et al. 2021): label probabilities renormalized over the labels, "
            f"divided by their mean over the content-free texts {config.content_free_texts} with the same "
            "demonstrations"
        )
    return metrics


def run_sst2_icl(
    config: Sst2IclConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Accuracy per (k, ordering) and mean/std per k on the SST-2 dev set; writes metrics.json."""
    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    train = load_sst2(config.train_path, data_dir, f"{key}.train_path", "train")
    dev = load_sst2(config.dev_path, data_dir, f"{key}.dev_path", "validation")[: config.max_examples]
    model, tokenizer, seq2seq, max_length = load_icl_model(model_dir, config.max_length)
    runs, shots = evaluate_shots(
        model,
        tokenizer,
        config,
        train,
        dev,
        config.shots,
        config.num_orderings,
        seed,
        max_length,
        name="sst2_icl",
    )
    metrics = icl_metrics(config, runs, shots, [row.label for row in dev], seq2seq, max_length)
    return write_metrics(output_dir, metrics, time.perf_counter() - began)


def run_icl_classification(
    config: IclClassificationConfig,
    model_dir: Path,
    shards_dir: Path | None,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """In-context classification of any classification data set: accuracy per (k, ordering), mean
    and std per k, raw and calibrated, optionally with random demonstration labels."""
    from lmforge.tasks.classification import load_task_data

    began = time.perf_counter()
    key = f"evaluation.tasks[{config.id}]"
    data = load_task_data(config, data_dir, key)  # type: ignore[arg-type]  # the same data fields
    words = config.label_words or {}
    unknown = sorted(set(words) - set(data.labels.names))
    if unknown:
        raise DataError(f"{key}.label_words: {unknown} are not labels of the data ({data.labels.names})")
    view = IclView(
        template=config.template,
        label_words={i: words.get(name, name) for i, name in enumerate(data.labels.names)},
        batch_size=config.batch_size,
        calibrate=config.calibrate,
        content_free_texts=list(config.content_free_texts),
        scoring=config.scoring,
    )
    if len(set(view.label_words.values())) != len(view.label_words):
        raise DataError(f"{key}.label_words: two labels share a word: {view.label_words}")
    model, tokenizer, seq2seq, max_length = load_icl_model(model_dir, config.max_length)
    runs, shots = evaluate_shots(
        model,
        tokenizer,
        view,
        data.train,
        data.dev,
        config.shots,
        config.num_orderings,
        seed,
        max_length,
        random_labels=config.random_labels,
        name=config.id,
    )
    metrics = icl_metrics(config, runs, shots, [row.label for row in data.dev], seq2seq, max_length)
    metrics.update(
        {
            "labels": data.labels.names,
            "label_words": [view.label_words[i] for i in range(len(data.labels.names))],
            "template": config.template,
            "random_labels": config.random_labels,
            "dev_source": data.dev_source,
            "skipped_rows": {split: len(notes) for split, notes in data.skipped.items()},
        }
    )
    return write_metrics(output_dir, metrics, time.perf_counter() - began)
