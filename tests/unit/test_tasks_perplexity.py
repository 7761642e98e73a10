"""WikiText perplexity against the model's own loss and a per-token brute force."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.tasks.config import WikitextPerplexityConfig
from lmforge.tasks.modeling import load_model, load_tokenizer
from lmforge.tasks.perplexity import plan_windows, run_wikitext_perplexity, total_nll
from tests.unit.test_tasks_support import build_tiny_gpt2, write_wikitext

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), n_positions=512)


def load(gpt2_dir):
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, gpt2_dir), load_tokenizer(gpt2_dir)


@pytest.mark.parametrize(
    ("num_ids", "max_length", "stride"), [(2, 4, 3), (10, 4, 3), (11, 4, 1), (100, 16, 7), (16, 16, 15)]
)
def test_windows_score_every_token_once(num_ids, max_length, stride):
    scored = []
    for begin, end, first_target in plan_windows(num_ids, max_length, stride):
        assert 0 <= begin < first_target <= end and end - begin <= max_length
        scored += range(first_target, end)
    assert scored == list(range(1, num_ids))


def test_single_window_equals_model_loss(gpt2_dir, tmp_path):
    text = write_wikitext(tmp_path, repeat=1)
    model, tokenizer = load(gpt2_dir)
    ids = [tokenizer.bos_token_id, *tokenizer(text)["input_ids"]]
    assert len(ids) <= 512
    with torch.no_grad():
        reference = float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    metrics = run_wikitext_perplexity(
        WikitextPerplexityConfig(), gpt2_dir, None, tmp_path, tmp_path / "out", 0
    )
    assert metrics["num_tokens"] == len(ids) - 1 and metrics["num_windows"] == 1
    assert metrics["perplexity"] == pytest.approx(math.exp(reference), rel=1e-5)
    # CRLF is normalised before counting bytes; the NLL covers every text token.
    assert metrics["num_bytes"] == len(text.encode())
    assert metrics["bits_per_byte"] == pytest.approx(
        reference * (len(ids) - 1) / math.log(2) / len(text.encode()), rel=1e-5
    )


def test_non_overlapping_windows_equal_summed_window_losses(gpt2_dir):
    model, _ = load(gpt2_dir)
    ids = torch.randint(
        0, 400, (1 + 31 * 4,), generator=torch.Generator().manual_seed(0)
    ).tolist()  # whole windows; a short tail gets extra context
    max_length = 32
    nll, count = total_nll(model, ids, max_length, stride=max_length - 1, batch_size=3)
    expected, start = 0.0, 0
    with torch.no_grad():
        while start < len(ids) - 1:
            window = torch.tensor([ids[start : start + max_length]])
            expected += float(model(window, labels=window).loss) * (window.shape[1] - 1)
            start += max_length - 1
    assert count == len(ids) - 1
    assert nll == pytest.approx(expected, rel=1e-5)


def test_sliding_window_equals_per_token_brute_force(gpt2_dir):
    model, _ = load(gpt2_dir)
    ids = torch.randint(0, 400, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    max_length = 8
    nll, count = total_nll(model, ids, max_length, stride=1, batch_size=4)
    expected = 0.0
    with torch.no_grad():
        for target in range(1, len(ids)):
            context = ids[max(0, target + 1 - max_length) : target]  # the max_length - 1 tokens before it
            logits = model(torch.tensor([context])).logits[0, -1].double()
            expected -= float(torch.log_softmax(logits, -1)[ids[target]])
    assert count == len(ids) - 1
    assert nll == pytest.approx(expected, rel=1e-5)
