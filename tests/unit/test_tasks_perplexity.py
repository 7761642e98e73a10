"""WikiText perplexity: windows against their definition, NLL against a per-token brute force, and
bits per byte only where the tokenizer round-trips the text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.core.errors import ConfigError
from lmforge.tasks.config import WikitextPerplexityConfig
from lmforge.tasks.modeling import load_model, load_tokenizer
from lmforge.tasks.perplexity import (
    bits_per_byte_inexact_reason,
    count_without_full_context,
    plan_windows,
    run_wikitext_perplexity,
    total_nll,
)
from tests.unit.test_tasks_support import build_tiny_gpt2, build_wordpiece_tokenizer, write_wikitext

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), n_positions=512)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_wikitext(path, repeat=1)  # 115 tokens: several windows of 32
    return path


def load(model_dir):
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, model_dir), load_tokenizer(model_dir)


def expected_context(target: int, max_length: int, stride: int) -> int:
    """Context tokens target `target` should see: all there are inside the first window, then
    groups of `stride` targets whose first sees max_length - stride + 1 tokens and each next one more."""
    if target <= max_length:
        return target
    return max_length - stride + 1 + (target - max_length - 1) % stride


def brute_force_nll(model, ids: list[int], max_length: int, stride: int) -> float:
    """One unpadded forward of the full LM per target, on exactly its expected context."""
    total = 0.0
    with torch.no_grad():
        for target in range(1, len(ids)):
            context = ids[target - expected_context(target, max_length, stride) : target]
            logits = model(torch.tensor([context])).logits[0, -1].double()
            total -= float(torch.log_softmax(logits, -1)[ids[target]])
    return total


@pytest.mark.parametrize(
    ("num_ids", "max_length", "stride"),
    [(2, 4, 3), (10, 4, 3), (11, 4, 1), (100, 16, 7), (16, 16, 15), (17, 16, 16), (100, 16, 16), (5, 16, 8)],
)
def test_windows_score_every_token_once_with_their_defined_context(num_ids, max_length, stride):
    scored, contexts = [], {}
    for begin, end, first_target in plan_windows(num_ids, max_length, stride):
        assert 0 <= begin < first_target < end and end - 1 - begin <= max_length  # the model's input
        scored += range(first_target, end)
        contexts.update({target: target - begin for target in range(first_target, end)})
    assert scored == list(range(1, num_ids))
    assert contexts == {t: expected_context(t, max_length, stride) for t in range(1, num_ids)}
    # Past the first window a target sees max_length - stride + 1 .. max_length tokens.
    later = [contexts[t] for t in range(max_length + 1, num_ids)]
    assert all(max_length - stride + 1 <= c <= max_length for c in later)
    short = sum(1 for c in later if c < max_length)
    assert count_without_full_context(plan_windows(num_ids, max_length, stride), max_length) == short


def test_stride_one_gives_full_context_and_stride_max_length_disjoint_inputs():
    assert count_without_full_context(plan_windows(50, 8, 1), 8) == 0
    chunked = plan_windows(50, 8, 8)
    assert [(begin, end - 1) for begin, end, _ in chunked] == [
        (0, 8),
        (8, 16),
        (16, 24),
        (24, 32),
        (32, 40),
        (40, 48),
        (48, 49),
    ]
    # Five whole chunks after the first, where only the last target sees 8 tokens; the tail's one
    # target sees 1.
    assert count_without_full_context(chunked, 8) == 5 * 7 + 1
    with pytest.raises(ValueError, match="stride"):
        plan_windows(50, 8, 9)


@pytest.mark.parametrize("stride", [1, 5, 12])
def test_total_nll_equals_per_token_brute_force(gpt2_dir, stride):
    model, _ = load(gpt2_dir)
    ids = torch.randint(0, 400, (50,), generator=torch.Generator().manual_seed(stride)).tolist()
    # batch_size 3: windows of different widths (the first, the tail) share batches, so padding counts.
    nll, count = total_nll(model, ids, max_length=12, stride=stride, batch_size=3)
    assert count == len(ids) - 1
    assert nll == pytest.approx(brute_force_nll(model, ids, 12, stride), rel=1e-5)


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
    assert metrics["num_scored_tokens"] == len(ids) - 1 and metrics["num_windows"] == 1
    assert metrics["max_length"] == 512 and metrics["stride"] == 256 and metrics["window"] == "sliding"
    assert metrics["num_tokens_without_full_context"] == 0
    assert metrics["perplexity"] == pytest.approx(math.exp(reference), rel=1e-5)
    # CRLF is normalised before counting bytes; the NLL covers every text token.
    assert metrics["num_bytes"] == len(text.encode())
    assert metrics["bits_per_byte_unavailable_reason"] is None
    assert metrics["bits_per_byte"] == pytest.approx(
        reference * (len(ids) - 1) / math.log(2) / len(text.encode()), rel=1e-5
    )


@pytest.mark.parametrize(("stride", "window"), [(16, "sliding"), (32, "chunked")])
def test_run_equals_brute_force_and_writes_only_deterministic_metrics(
    gpt2_dir, data_dir, tmp_path, stride, window
):
    config = WikitextPerplexityConfig(max_length=32, stride=stride, batch_size=4)
    metrics = run_wikitext_perplexity(config, gpt2_dir, None, data_dir, tmp_path / "a", 0)
    text = (data_dir / "wikitext2_raw" / "valid.txt").read_bytes().decode().replace("\r\n", "\n")
    model, tokenizer = load(gpt2_dir)
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    nll = brute_force_nll(model, ids, 32, stride)
    later = [expected_context(t, 32, stride) for t in range(33, len(ids))]
    assert metrics["window"] == window and metrics["num_scored_tokens"] == len(ids) - 1
    assert metrics["num_windows"] == 1 + math.ceil((len(ids) - 33) / stride)
    assert metrics["num_tokens_without_full_context"] == sum(c < 32 for c in later) > 0
    assert metrics["mean_nll"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
    # metrics.json is part of the content id: no wall-clock time, and byte-identical on a re-run.
    again = run_wikitext_perplexity(config, gpt2_dir, None, data_dir, tmp_path / "b", 0)
    saved = (tmp_path / "a" / "metrics.json").read_text()
    assert saved == (tmp_path / "b" / "metrics.json").read_text()
    assert json.loads(saved) == {key: value for key, value in again.items() if key != "seconds"}
    timings = json.loads((tmp_path / "a" / "telemetry" / "timings.json").read_text())
    assert timings == {"seconds": metrics["seconds"]}


def test_stride_beyond_the_model_window_names_the_key(gpt2_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation\.tasks\[wikitext_perplexity\]\.stride: 600"):
        run_wikitext_perplexity(WikitextPerplexityConfig(stride=600), gpt2_dir, None, data_dir, tmp_path, 0)


def nfkc_byte_level_tokenizer():
    """Byte-level BPE behind an NFKC normalizer: exact on plain text, lossy on compatibility characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(["the fine film", "a fine, fine day"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.mark.parametrize(
    ("text", "first_difference"),
    [("the fine film\n", None), ("the \ufb01ne film\n", 4), ("\uff26\uff35\uff2c\uff2c width", 0)],
)
def test_round_trip_decides_bits_per_byte_for_a_normalizing_tokenizer(text, first_difference):
    tokenizer = nfkc_byte_level_tokenizer()
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    reason = bits_per_byte_inexact_reason(tokenizer, text, text_ids, first_scored=True)
    if first_difference is None:
        assert reason is None
    else:
        assert reason == (
            "the tokenizer does not round-trip the text "
            f"(decode(encode(text)) differs at character {first_difference})"
        )


def test_wordpiece_tokenizer_gets_no_bits_per_byte(tmp_path, data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_wordpiece_tokenizer(tmp_path)  # lowercases, has no BOS/EOS
    reason = bits_per_byte_inexact_reason(
        tokenizer, "The Film", tokenizer("The Film", add_special_tokens=False)["input_ids"], True
    )
    assert reason is not None and reason.endswith("differs at character 0)")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    metrics = run_wikitext_perplexity(
        WikitextPerplexityConfig(), tmp_path, None, data_dir, tmp_path / "out", 0
    )
    assert metrics["bits_per_byte"] is None and metrics["num_bytes"] > 0
    reason = metrics["bits_per_byte_unavailable_reason"]
    assert reason.startswith("no BOS/EOS token") and "does not round-trip the text" in reason
    # Without a boundary token the first text token has nothing to be predicted from: ids[1:] are scored.
    text = (data_dir / "wikitext2_raw" / "valid.txt").read_bytes().decode().replace("\r\n", "\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert metrics["num_scored_tokens"] == len(ids) - 1 and metrics["stride"] == 32
    model, _ = load(tmp_path)
    assert metrics["mean_nll"] == pytest.approx(
        brute_force_nll(model, ids, 64, 32) / (len(ids) - 1), rel=1e-5
    )


def test_generic_perplexity_reads_any_table_as_documents(gpt2_dir, tmp_path):
    """A table's text column scores as its documents joined by a blank line: the same numbers as
    that text in a plain file (which the tests above check against brute force)."""
    import json as json_module

    from lmforge.core.errors import DataError
    from lmforge.tasks.config import PerplexityConfig, WikitextPerplexityConfig
    from lmforge.tasks.perplexity import run_perplexity

    documents = ["The cat sat on the mat.", "  ", "A dog ran home.\nIt was late.", "Rain fell all day."]
    (tmp_path / "docs.jsonl").write_text("".join(json_module.dumps({"body": d}) + "\n" for d in documents))
    joined = "The cat sat on the mat.\n\nA dog ran home.\nIt was late."
    (tmp_path / "joined.txt").write_text(joined)
    table = run_perplexity(
        PerplexityConfig(
            path=str(tmp_path / "docs.jsonl"), text_column="body", max_documents=2, max_length=16
        ),
        gpt2_dir,
        None,
        None,
        tmp_path / "a",
        seed=0,
    )
    plain = run_wikitext_perplexity(
        WikitextPerplexityConfig(path=str(tmp_path / "joined.txt"), max_length=16),
        gpt2_dir,
        None,
        None,
        tmp_path / "b",
        0,
    )
    assert table["num_documents"] == 2 and table["num_characters"] == len(joined)
    assert table["mean_nll"] == plain["mean_nll"] and table["bits_per_byte"] == plain["bits_per_byte"]
    text_file = run_perplexity(
        PerplexityConfig(path=str(tmp_path / "joined.txt"), max_length=16, max_characters=len(joined)),
        gpt2_dir,
        None,
        None,
        tmp_path / "c",
        seed=0,
    )
    assert text_file["mean_nll"] == plain["mean_nll"] and text_file["num_documents"] is None
    with pytest.raises(DataError, match=r"column 'text' not found .*columns: body"):
        run_perplexity(
            PerplexityConfig(path=str(tmp_path / "docs.jsonl")), gpt2_dir, None, None, tmp_path / "d", 0
        )
