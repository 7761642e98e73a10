"""Pseudo-perplexity: windows against their definition, PLL against a one-masked-copy-at-a-time
brute force on the debug BERT, with our own WordPiece tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.tasks.config import EvaluationConfig, WikitextPseudoPerplexityConfig
from lmforge.tasks.modeling import load_model, load_tokenizer
from lmforge.tasks.pseudo_perplexity import (
    plan_windows,
    pseudo_log_likelihood,
    run_wikitext_pseudo_perplexity,
    wrapper_ids,
)
from tests.unit.test_tasks_support import corpus_text, write_wikitext
from tests.unit.test_tokenization_helpers import write_corpus

pytestmark = pytest.mark.unit

SEQ_LEN = 32  # the debug model's positions: windows of 30 text tokens between [CLS] and [SEP]


def build_debug_bert(model_dir: Path, seq_len: int = SEQ_LEN, pretraining_heads: bool = False) -> Path:
    """Our WordPiece tokenizer (trained on a tiny corpus) and a random-init debug-size BERT, saved together."""
    from lmforge.tokenization import TokenizerConfig, load_tokenizer_meta, train_tokenizer
    from lmforge.training.config import ModelConfig
    from lmforge.training.models import build_bert

    corpus_dir = write_corpus(model_dir.parent / f"{model_dir.name}-corpus", [("d0", corpus_text())])
    train_tokenizer(
        TokenizerConfig(algorithm="wordpiece", vocab_size=400, min_frequency=1), corpus_dir, model_dir
    )
    meta = load_tokenizer_meta(model_dir)
    torch.manual_seed(0)
    model = build_bert(
        ModelConfig(size="debug"), meta["vocab_size"], seq_len, meta["special_ids"], pretraining_heads
    )
    model.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The brute force runs hundreds of tiny forwards; threads only add contention (30x on a busy 2-CPU host).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_debug_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_wikitext(path, repeat=2)  # about 120 tokens: several windows of 30
    return path


def load(model_dir: Path):
    from transformers import AutoModelForMaskedLM

    return load_model(AutoModelForMaskedLM, model_dir), load_tokenizer(model_dir)


def expected_begin(target: int, num_ids: int, body: int, stride: int) -> int:
    """Where the window scoring `target` starts, by the module docstring's definition: windows move on
    by `stride` and score the `stride` tokens `left` after their start; the last one ends at the text's end."""
    left = (body - stride) // 2
    return min(stride * max(0, (target - left) // stride), max(0, num_ids - body))


def text_ids(tokenizer, data_dir: Path) -> list[int]:
    text = (data_dir / "wikitext2_raw" / "valid.txt").read_bytes().decode().replace("\r\n", "\n")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def brute_force_pll(model, tokenizer, ids: list[int], body: int, stride: int, num_targets: int) -> float:
    """One unbatched forward of the full model per token: [CLS] window [SEP] with only that token masked."""
    total = 0.0
    with torch.no_grad():
        for target in range(num_targets):
            begin = expected_begin(target, len(ids), body, stride)
            window = list(ids[begin : begin + body])
            window[target - begin] = tokenizer.mask_token_id
            input_ids = [tokenizer.cls_token_id, *window, tokenizer.sep_token_id]
            logits = model(input_ids=torch.tensor([input_ids])).logits[0, 1 + target - begin].double()
            total += float(torch.log_softmax(logits, -1)[ids[target]])
    return total


@pytest.mark.parametrize(
    ("num_ids", "body", "stride", "num_targets"),
    [(1, 4, 1, None), (3, 4, 2, None), (4, 4, 4, None), (10, 4, 1, None), (11, 4, 3, None)]
    + [(100, 16, 1, None), (100, 16, 5, None), (100, 16, 16, None), (101, 16, 6, 40), (50, 16, 7, 200)],
)
def test_windows_score_every_token_once_with_context_on_both_sides(num_ids, body, stride, num_targets):
    windows = plan_windows(num_ids, body, stride, num_targets)
    limit = min(num_ids, num_targets or num_ids)
    left = (body - stride) // 2
    right = body - stride - left
    scored = []
    for begin, end, first, end_target in windows:
        assert 0 <= begin <= first < end_target <= end <= num_ids
        assert end - begin == min(body, num_ids)  # every window fills the model's window
        for target in range(first, end_target):
            assert begin == expected_begin(target, num_ids, body, stride)
            # As much context as the window allows on each side, or all the text has.
            assert target - begin >= min(target, left)
            assert end - 1 - target >= min(num_ids - 1 - target, right)
            scored.append(target)
    assert scored == list(range(limit))


def test_stride_one_centres_every_token_and_bad_strides_fail():
    windows = plan_windows(60, 9, 1)
    # The first window also scores the 4 tokens before its centre, the last the 4 after it.
    assert [(first, end_target) for _, _, first, end_target in windows[:: len(windows) - 1]] == [
        (0, 5),
        (55, 60),
    ]
    for begin, end, first, end_target in windows[1:-1]:
        assert end_target == first + 1 and (first - begin, end - 1 - first) == (4, 4)
    assert len(windows) == 60 - 9 + 1
    with pytest.raises(ValueError, match="stride"):
        plan_windows(50, 8, 9)


@pytest.mark.parametrize(("stride", "batch_size"), [(1, 7), (5, 16), (30, 64)])
def test_pll_equals_brute_force_over_several_windows(bert_dir, data_dir, tmp_path, stride, batch_size):
    config = WikitextPseudoPerplexityConfig(stride=stride, batch_size=batch_size)
    metrics = run_wikitext_pseudo_perplexity(config, bert_dir, None, data_dir, tmp_path, seed=0)
    model, tokenizer = load(bert_dir)
    ids = text_ids(tokenizer, data_dir)
    assert len(ids) > 3 * (SEQ_LEN - 2)  # several windows, so the stride matters
    expected = brute_force_pll(model, tokenizer, ids, SEQ_LEN - 2, stride, len(ids))
    assert metrics["num_tokens"] == metrics["num_text_tokens"] == len(ids)
    assert metrics["pseudo_log_likelihood"] == pytest.approx(expected, rel=1e-5)
    assert metrics["pseudo_perplexity"] == pytest.approx(math.exp(-expected / len(ids)), rel=1e-5)
    assert metrics["max_length"] == SEQ_LEN and metrics["window_text_tokens"] == SEQ_LEN - 2
    assert metrics["wrappers"] == ["[CLS]", "[SEP]"]
    assert metrics["config"] == {
        "type": "wikitext_pseudo_perplexity",
        "id": "wikitext_pseudo_perplexity",
        "path": "wikitext2_raw/valid.txt",
        "max_length": None,
        "stride": stride,
        "max_tokens": 4096,
    }


def test_max_tokens_scores_a_prefix_with_context_from_the_whole_text(bert_dir, data_dir, tmp_path):
    config = WikitextPseudoPerplexityConfig(max_length=20, stride=3, max_tokens=25, batch_size=4)
    metrics = run_wikitext_pseudo_perplexity(config, bert_dir, None, data_dir, tmp_path, seed=0)
    model, tokenizer = load(bert_dir)
    ids = text_ids(tokenizer, data_dir)
    assert metrics["num_tokens"] == 25 < metrics["num_text_tokens"] == len(ids)
    assert metrics["pseudo_log_likelihood"] == pytest.approx(
        brute_force_pll(model, tokenizer, ids, 18, 3, 25), rel=1e-5
    )


def test_text_shorter_than_a_window_is_one_window(bert_dir, tmp_path):
    model, tokenizer = load(bert_dir)
    ids = tokenizer("the european lobster is a species of clawed lobster", add_special_tokens=False)[
        "input_ids"
    ]
    windows = plan_windows(len(ids), SEQ_LEN - 2, 1)
    assert windows == [(0, len(ids), 0, len(ids))]
    pll, count = pseudo_log_likelihood(
        model, ids, windows, ([tokenizer.cls_token_id], [tokenizer.sep_token_id]), tokenizer.mask_token_id, 3
    )
    assert count == len(ids)
    assert pll == pytest.approx(brute_force_pll(model, tokenizer, ids, len(ids), 1, len(ids)), rel=1e-5)


def test_bert_for_pretraining_export_is_scored_by_its_mlm_head(tmp_path, data_dir):
    # mlm_nsp / mlm_sop export BertForPreTraining; AutoModelForMaskedLM keeps its MLM head.
    model_dir = build_debug_bert(tmp_path / "model", pretraining_heads=True)
    config = WikitextPseudoPerplexityConfig(stride=10, max_tokens=40)
    metrics = run_wikitext_pseudo_perplexity(config, model_dir, None, data_dir, tmp_path / "out", seed=0)
    model, tokenizer = load(model_dir)
    assert type(model).__name__ == "BertForMaskedLM"
    ids = text_ids(tokenizer, data_dir)
    assert metrics["pseudo_log_likelihood"] == pytest.approx(
        brute_force_pll(model, tokenizer, ids, SEQ_LEN - 2, 10, 40), rel=1e-5
    )


def test_metrics_file_is_deterministic_and_timings_are_telemetry(bert_dir, data_dir, tmp_path):
    config = WikitextPseudoPerplexityConfig(stride=4, max_tokens=50, batch_size=8)
    first = run_wikitext_pseudo_perplexity(config, bert_dir, None, data_dir, tmp_path / "a", seed=0)
    run_wikitext_pseudo_perplexity(config, bert_dir, None, data_dir, tmp_path / "b", seed=1)
    saved = (tmp_path / "a" / "metrics.json").read_text()
    assert saved == (tmp_path / "b" / "metrics.json").read_text()
    assert json.loads(saved) == {key: value for key, value in first.items() if key != "seconds"}
    assert "batch_size" not in json.loads(saved)["config"]  # operational: not part of the result
    timings = json.loads((tmp_path / "a" / "telemetry" / "timings.json").read_text())
    assert timings == {"seconds": first["seconds"]}


def test_real_wikitext_valid_from_the_data_dir(bert_dir, shared_data_dir, tmp_path):
    config = WikitextPseudoPerplexityConfig(max_tokens=30, batch_size=16)
    metrics = run_wikitext_pseudo_perplexity(config, bert_dir, None, shared_data_dir, tmp_path, seed=0)
    model, tokenizer = load(bert_dir)
    ids = text_ids(tokenizer, shared_data_dir)
    assert metrics["num_tokens"] == 30 and metrics["num_text_tokens"] == len(ids) > 100_000
    assert metrics["pseudo_log_likelihood"] == pytest.approx(
        brute_force_pll(model, tokenizer, ids, SEQ_LEN - 2, 1, 30), rel=1e-5
    )


def test_stride_beyond_the_window_names_the_key(bert_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation\.tasks\[wikitext_pseudo_perplexity\]\.stride: 31 "):
        run_wikitext_pseudo_perplexity(
            WikitextPseudoPerplexityConfig(stride=31), bert_dir, None, data_dir, tmp_path, seed=0
        )
    with pytest.raises(
        ConfigError, match=r"tasks\.0: Value error, stride \(9\) must not exceed max_length - 2"
    ):
        validate_config(
            EvaluationConfig,
            {"tasks": [{"name": "wikitext_pseudo_perplexity", "max_length": 10, "stride": 9}]},
        )


def test_wrappers_come_from_the_post_processor_without_cls_and_sep():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel({"<unk>": 0, "</s>": 1, "<mask>": 2, "lobster": 3}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", mask_token="<mask>")
    assert wrapper_ids(tokenizer) == ([], [1])
