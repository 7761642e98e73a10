"""SST-2 ICL: prompt format, batched continuation scoring against a per-example brute force."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.config import Sst2IclConfig
from tasks.data import LabelledText, load_sst2
from tasks.icl import build_prompt, predict, run_sst2_icl, sample_demonstrations
from tasks.modeling import load_model, load_tokenizer
from tasks.scoring import ContinuationRequest, continuation_log_likelihoods
from tests.unit.test_tasks_support import build_tiny_gpt2, write_sst2

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), n_positions=48)


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


def test_predictions_equal_brute_force_argmax(gpt2_dir, data_dir):
    model, tokenizer = load_model_and_tokenizer(gpt2_dir)
    config = Sst2IclConfig(batch_size=3)
    train = load_sst2("sst2/train.tsv", data_dir, "k", "train")
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:5]
    demos = [train[i] for i in sample_demonstrations(train, 2, 0, 1)]
    predictions, _ = predict(model, tokenizer, config, demos, dev, max_length=48)
    for row, predicted in zip(dev, predictions, strict=True):
        context, continuations = build_prompt(config, demos, row.text)
        context_ids = [tokenizer.bos_token_id, *tokenizer(context)["input_ids"]]
        scores = {
            label: brute_force_log_likelihood(model, context_ids, tokenizer(cont)["input_ids"], 48)
            for label, cont in continuations.items()
        }
        assert predicted == max(scores, key=scores.get)


def test_run_reports_every_k_and_ordering(gpt2_dir, data_dir, tmp_path):
    config = Sst2IclConfig(shots=[0, 2], num_orderings=3, max_examples=8)
    metrics = run_sst2_icl(config, gpt2_dir, None, data_dir, tmp_path, seed=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["shots"] == metrics["shots"]
    assert set(metrics["shots"]) == {"0", "2"} and len(metrics["runs"]) == 6
    zero = metrics["shots"]["0"]
    assert zero["std_accuracy"] == 0 and len(set(zero["accuracies"])) == 1 and "note" in zero
    for shot in metrics["shots"].values():
        assert len(shot["accuracies"]) == 3 and all(0 <= a <= 1 for a in shot["accuracies"])
        assert shot["mean_accuracy"] == pytest.approx(sum(shot["accuracies"]) / 3)
    two = [run["demonstration_indices"] for run in metrics["runs"] if run["k"] == 2]
    assert len({tuple(d) for d in two}) == 3
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")[:8]
    majority = max(sum(r.label == 1 for r in dev), sum(r.label == 0 for r in dev)) / 8
    assert metrics["num_examples"] == 8 and metrics["majority_baseline_accuracy"] == majority


def load_model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, model_dir), load_tokenizer(model_dir)
