"""SST-2 ICL: prompt format, prefix-cached scoring and calibration against per-example brute force;
T5 span-fill scoring against a hand computation with model(input_ids, labels=...)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from lmforge.app.report import fmt, summary_rows
from lmforge.tasks.config import Sst2IclConfig
from lmforge.tasks.data import LabelledText, load_sst2
from lmforge.tasks.icl import (
    DEMONSTRATION_SEPARATOR,
    argmax_labels,
    build_prompt,
    calibrate,
    content_free_log_prior,
    evaluate_ordering,
    render_demonstration,
    run_sst2_icl,
    sample_demonstrations,
    score_labels,
)
from lmforge.tasks.modeling import load_model, load_tokenizer
from lmforge.tasks.scoring import ContinuationRequest, continuation_log_likelihoods, plan_rows, shared_prefix
from tests.unit.test_tasks_support import build_tiny_gpt2, write_sst2
from tests.unit.test_tasks_t5_support import build_tiny_t5

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), n_positions=48)


@pytest.fixture(scope="module")
def long_gpt2_dir(tmp_path_factory):
    """Room for k=5 prompts, so most requests share the demonstrations' prefix."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2_long"), n_positions=256, seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_sst2(path)
    return path


def brute_force_log_likelihood(
    model, context_ids: list[int], continuation_ids: list[int], max_length: int
) -> float:
    """One unpadded forward of the full LM per request; the whole vocabulary softmax."""
    ids = (context_ids + continuation_ids)[-max_length:]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    first = len(ids) - len(continuation_ids)
    return sum(float(log_probs[t - 1, ids[t]]) for t in range(first, len(ids)))


def test_prompt_format():
    config = Sst2IclConfig()
    demos = [LabelledText("great fun", 1), LabelledText("a {dull} mess", 0)]
    context, continuations = build_prompt(config, demos, "so so")
    assert (
        context
        == "Review: great fun\nSentiment: positive\n\nReview: a {dull} mess\nSentiment: negative\n\nReview: so so\nSentiment:"
    )
    assert continuations == {0: " negative", 1: " positive"}


def test_demonstrations_are_seeded_and_differ_between_orderings():
    rows = [LabelledText(str(i), i % 2) for i in range(50)]
    draws = [sample_demonstrations(rows, 5, seed=0, ordering=o) for o in range(3)]
    assert draws[0] == sample_demonstrations(rows, 5, seed=0, ordering=0)
    assert len({tuple(d) for d in draws}) == 3 and all(len(set(d)) == 5 for d in draws)


def test_batched_scores_equal_brute_force(gpt2_dir):
    model, tokenizer = load_model_and_tokenizer(gpt2_dir)
    texts = [
        "Review: a charming film\nSentiment:",
        "Review: dull\nSentiment:",
        "x",
        "Review: " + "wit , " * 40,
    ]
    requests = [
        ContinuationRequest(
            [tokenizer.eos_token_id, *tokenizer(text)["input_ids"]], tokenizer(word)["input_ids"]
        )
        for text in texts
        for word in (" positive", " negative", " the film is")
    ]
    max_length = 48  # the last text overflows: left truncation is exercised
    scores, num_truncated = continuation_log_likelihoods(model, requests, max_length, batch_size=5)
    assert num_truncated == 3
    for request, score in zip(requests, scores, strict=True):
        expected = brute_force_log_likelihood(
            model, request.context_ids, request.continuation_ids, max_length
        )
        assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_prefix_cached_scores_equal_brute_force(long_gpt2_dir, data_dir, k):
    model, tokenizer = load_model_and_tokenizer(long_gpt2_dir)
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")
    demos = [train[i] for i in sample_demonstrations(train, k, 0, 2)]
    # A two-token label word gives continuations of different lengths, hence rows of their own.
    config = Sst2IclConfig(label_words={0: "negative", 1: "very positive"})
    requests = []
    for row in dev:
        context, continuations = build_prompt(config, demos, row.text)
        context_ids = [tokenizer.eos_token_id, *tokenizer(context)["input_ids"]]
        requests += [
            ContinuationRequest(context_ids, tokenizer(c)["input_ids"]) for c in continuations.values()
        ]
    lengths = sorted(len(r.context_ids) + len(r.continuation_ids) for r in requests)
    max_length = lengths[-3]  # the longest prompts are left-truncated: they cannot use the prefix
    rows, _, num_truncated = plan_rows(requests, max_length)
    prefix = shared_prefix(rows)
    assert num_truncated >= 1 and len(rows) < len(requests)
    # The prefix holds the boundary token, every demonstration and the query's "Review:" (give or
    # take the last token, which BPE may merge with the query text).
    shared_text = "".join(
        render_demonstration(config.template, d, config.label_words) + DEMONSTRATION_SEPARATOR for d in demos
    )
    assert len(prefix) >= len(tokenizer(shared_text + "Review:")["input_ids"])
    # batch_size 3 leaves rows of different lengths, i.e. padding, in every batch.
    scores, _ = continuation_log_likelihoods(model, requests, max_length, batch_size=3)
    for request, score in zip(requests, scores, strict=True):
        expected = brute_force_log_likelihood(
            model, request.context_ids, request.continuation_ids, max_length
        )
        assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)


def brute_force_label_scores(model, tokenizer, config, demos, text: str, max_length: int) -> torch.Tensor:
    """log-likelihood of each label's continuation (labels 0, 1), each prompt scored from scratch."""
    context, continuations = build_prompt(config, demos, text)
    context_ids = [tokenizer.bos_token_id, *tokenizer(context)["input_ids"]]
    return torch.tensor(
        [
            brute_force_log_likelihood(
                model, context_ids, tokenizer(continuations[label])["input_ids"], max_length
            )
            for label in (0, 1)
        ],
        dtype=torch.float64,
    )


def test_calibration_equals_brute_force(gpt2_dir, data_dir):
    model, tokenizer = load_model_and_tokenizer(gpt2_dir)
    config = Sst2IclConfig(batch_size=3)
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:6]
    demos = [train[i] for i in sample_demonstrations(train, 1, 0, 1)]

    def brute_scores(text: str) -> torch.Tensor:
        return brute_force_label_scores(model, tokenizer, config, demos, text, 48)

    raw = torch.stack([brute_scores(row.text) for row in dev])
    prior = torch.stack([brute_scores(text).softmax(0) for text in ("N/A", "")]).mean(0)
    calibrated = raw.softmax(1) / prior
    gold = torch.tensor([row.label for row in dev])
    result = evaluate_ordering(model, tokenizer, config, demos, dev, max_length=48)
    assert result["accuracy"] == pytest.approx(float((raw.argmax(1) == gold).double().mean()))
    assert result["calibrated_accuracy"] == pytest.approx(
        float((calibrated.argmax(1) == gold).double().mean())
    )
    assert result["calibrated_predicted_positive_fraction"] == pytest.approx(
        float(calibrated.argmax(1).double().mean())
    )
    assert list(result["content_free_prior"].values()) == pytest.approx(prior.tolist(), rel=1e-5)
    scores, _ = score_labels(model, tokenizer, config, demos, [row.text for row in dev], 48)
    cf_scores, _ = score_labels(model, tokenizer, config, demos, ["N/A", ""], 48)
    ours = calibrate(scores, content_free_log_prior(cf_scores))
    # exp(calibrated score) = p(label) / prior(label); 1e-5 errors in log-likelihood compound here.
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64).exp(), calibrated, rtol=1e-4, atol=0)


def test_calibration_flips_a_one_class_classifier():
    """Raw scores always favour label 1; dividing by the content-free prior (0.3, 0.7) flips two."""
    shift = -3.0  # unnormalized log-likelihoods: renormalizing over the labels removes it
    raw = [[math.log(p0) + shift, math.log(p1) + shift] for p0, p1 in [(0.2, 0.8), (0.4, 0.6), (0.28, 0.72)]]
    # Averaged in probability space: (0.1 + 0.5) / 2 = 0.3. A log-space (geometric) mean would
    # give 0.25 and flip the third row as well.
    content_free = [[math.log(0.1), math.log(0.9)], [math.log(0.5) - 7, math.log(0.5) - 7]]
    log_prior = content_free_log_prior(content_free)
    assert [math.exp(v) for v in log_prior] == pytest.approx([0.3, 0.7])
    calibrated = calibrate(raw, log_prior)
    assert argmax_labels(raw) == [1, 1, 1]
    assert argmax_labels(calibrated) == [1, 0, 1]
    assert calibrated[1] == pytest.approx([math.log(0.4 / 0.3), math.log(0.6 / 0.7)])


def brute_force_run(model, tokenizer, config, demos, dev, max_length: int) -> dict:
    """One ordering's metrics from per-prompt scores, computed independently of the task code."""
    raw = torch.stack(
        [brute_force_label_scores(model, tokenizer, config, demos, r.text, max_length) for r in dev]
    )
    cf = [
        brute_force_label_scores(model, tokenizer, config, demos, t, max_length)
        for t in config.content_free_texts
    ]
    prior = torch.stack([scores.softmax(0) for scores in cf]).mean(0)
    gold = torch.tensor([row.label for row in dev])
    predicted, calibrated = raw.argmax(1), (raw.softmax(1) / prior).argmax(1)
    return {
        "accuracy": int((predicted == gold).sum()) / len(dev),
        "predicted_positive_fraction": int(predicted.sum()) / len(dev),
        "calibrated_accuracy": int((calibrated == gold).sum()) / len(dev),
        "calibrated_predicted_positive_fraction": int(calibrated.sum()) / len(dev),
        "prior": prior.tolist(),
    }


def test_run_equals_per_prompt_brute_force(gpt2_dir, data_dir, tmp_path):
    config = Sst2IclConfig(shots=[0, 2], num_orderings=3, max_examples=8)
    metrics = run_sst2_icl(config, gpt2_dir, None, data_dir, tmp_path, seed=0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    # metrics.json is part of the content id: the returned metrics less the wall-clock time.
    assert saved == {key: value for key, value in metrics.items() if key != "seconds"}
    assert json.loads((tmp_path / "telemetry" / "timings.json").read_text()) == {
        "seconds": metrics["seconds"]
    }
    assert set(metrics["shots"]) == {"0", "2"} and len(metrics["runs"]) == 6
    model, tokenizer = load_model_and_tokenizer(gpt2_dir)
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:8]
    expected = {}
    for run in metrics["runs"]:
        assert run["demonstration_indices"] == sample_demonstrations(
            train, run["k"], 0, run["ordering"] if run["k"] else 0
        )
        demos = [train[i] for i in run["demonstration_indices"]]
        reference = brute_force_run(model, tokenizer, config, demos, dev, max_length=48)
        for key in (
            "accuracy",
            "predicted_positive_fraction",
            "calibrated_accuracy",
            "calibrated_predicted_positive_fraction",
        ):
            assert run[key] == reference[key], (run["k"], run["ordering"], key)
        assert list(run["content_free_prior"].values()) == pytest.approx(reference["prior"], rel=1e-5)
        expected.setdefault(str(run["k"]), []).append(reference)
    for k, references in expected.items():
        shot = metrics["shots"][k]
        for prefix in ("", "calibrated_"):
            accuracies = [reference[f"{prefix}accuracy"] for reference in references]
            assert shot[f"{prefix}accuracies"] == accuracies
            assert shot[f"{prefix}mean_accuracy"] == pytest.approx(statistics.fmean(accuracies))
            assert shot[f"{prefix}std_accuracy"] == pytest.approx(statistics.pstdev(accuracies))
    zero = metrics["shots"]["0"]
    assert zero["std_accuracy"] == 0 and len(set(zero["accuracies"])) == 1 and "note" in zero
    assert len({tuple(run["demonstration_indices"]) for run in metrics["runs"] if run["k"] == 2}) == 3
    majority = max(sum(r.label == 1 for r in dev), sum(r.label == 0 for r in dev)) / 8
    assert metrics["num_examples"] == 8 and metrics["majority_baseline_accuracy"] == majority
    summary = dict(summary_rows({"stages": {"eval/sst2_icl": {"metrics": metrics}}}))
    calibrated = metrics["shots"]["2"]
    assert summary["SST-2 ICL calibrated accuracy, k=2"] == (
        f"{fmt(calibrated['calibrated_mean_accuracy'])} ± {fmt(calibrated['calibrated_std_accuracy'])} (3 orderings)"
    )
    assert "SST-2 ICL accuracy, k=0" in summary and "SST-2 ICL calibrated accuracy, k=0" in summary


def test_calibration_can_be_turned_off(gpt2_dir, data_dir, tmp_path):
    config = Sst2IclConfig(shots=[1], num_orderings=3, max_examples=4, calibrate=False)
    metrics = run_sst2_icl(config, gpt2_dir, None, data_dir, tmp_path, seed=0)
    assert not any(key.startswith("calibrated") for key in metrics["shots"]["1"])
    assert all(
        "calibrated_accuracy" not in run and "content_free_prior" not in run for run in metrics["runs"]
    )


def load_model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, model_dir), load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def hand_span_fill_scores(model, tokenizer, config, demos, text: str, max_length=None) -> torch.Tensor:
    """Per label (0, 1): the prompt written out by hand with <extra_id_0> in the query's label slot,
    then one unpadded model(input_ids, labels=<extra_id_0> word </s>) per label; the label word's
    log-probabilities read off the logits (the sentinel and </s> positions are not summed)."""
    shown = (
        "".join(f"Review: {d.text}\nSentiment: {config.label_words[d.label]}\n\n" for d in demos)
        + f"Review: {text}\nSentiment:"
    )
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    # The tokenizer appends </s>; the sentinel goes between the prompt and it.
    encoder_ids = tokenizer(shown)["input_ids"]
    encoder_ids = [*encoder_ids[:-1], sentinel, encoder_ids[-1]][-(max_length or len(encoder_ids) + 1) :]
    scores = []
    with torch.no_grad():
        for label in (0, 1):
            word_ids = tokenizer(config.label_words[label])["input_ids"][:-1]  # without its </s>
            labels = torch.tensor([[sentinel, *word_ids, tokenizer.eos_token_id]])
            logits = model(input_ids=torch.tensor([encoder_ids]), labels=labels).logits[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            scores.append(sum(float(log_probs[1 + j, token]) for j, token in enumerate(word_ids)))
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("max_length", [None, 24])
def test_t5_span_fill_scores_equal_hand_computation(t5_dir, data_dir, max_length):
    from transformers import AutoModelForSeq2SeqLM

    model, tokenizer = load_model(AutoModelForSeq2SeqLM, t5_dir), load_tokenizer(t5_dir)
    # A multi-piece label word checks the sum over its tokens.
    config = Sst2IclConfig(label_words={0: "negative", 1: "very positive"}, batch_size=2)
    assert len(tokenizer("very positive", add_special_tokens=False)["input_ids"]) > 1
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:5]
    demos = [train[i] for i in sample_demonstrations(train, 2, 0, 1)]
    texts = [row.text for row in dev]
    scores, num_truncated = score_labels(model, tokenizer, config, demos, texts, max_length)
    assert num_truncated == (0 if max_length is None else len(texts))
    for text, row in zip(texts, scores, strict=True):
        expected = hand_span_fill_scores(model, tokenizer, config, demos, text, max_length)
        assert row == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-5)


def test_t5_run_equals_hand_computation(t5_dir, data_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    config = Sst2IclConfig(shots=[0, 2], num_orderings=3, max_examples=6)
    metrics = run_sst2_icl(config, t5_dir, None, data_dir, tmp_path, seed=0)
    assert metrics["max_length"] is None and "<extra_id_0>" in metrics["scoring"]
    model, tokenizer = load_model(AutoModelForSeq2SeqLM, t5_dir), load_tokenizer(t5_dir)
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:6]
    gold = torch.tensor([row.label for row in dev])
    for run in metrics["runs"]:
        demos = [train[i] for i in run["demonstration_indices"]]
        raw = torch.stack([hand_span_fill_scores(model, tokenizer, config, demos, r.text) for r in dev])
        prior = torch.stack(
            [hand_span_fill_scores(model, tokenizer, config, demos, t).softmax(0) for t in ("N/A", "")]
        ).mean(0)
        calibrated = (raw.softmax(1) / prior).argmax(1)
        assert run["accuracy"] == int((raw.argmax(1) == gold).sum()) / len(dev)
        assert run["calibrated_accuracy"] == int((calibrated == gold).sum()) / len(dev)
        assert list(run["content_free_prior"].values()) == pytest.approx(prior.tolist(), rel=1e-5)
    summary = dict(summary_rows({"stages": {"eval/sst2_icl": {"metrics": metrics}}}))
    assert "SST-2 ICL accuracy, k=2" in summary and "SST-2 ICL calibrated accuracy, k=0" in summary
