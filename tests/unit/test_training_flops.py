"""FLOPs against a hand count of the debug GPT-2 and against torch FlopCounterMode for GPT-2, BERT and T5
(training and generation), the matmul peak and its sanity check, nominal peaks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.training import ModelConfig, build_model
from lmforge.training.flops import (
    MIN_PLAUSIBLE_PEAK,
    checked_peak,
    encoder_inference_flops,
    flops_per_token,
    inference_flops_per_token,
    matmul_parameters,
    measure_matmul_peak,
    model_flops_per_token,
    nominal_peak,
    plausible_peak_floor,
    training_flops_per_example,
)
from lmforge.training.models import build_bert, build_gpt2, build_t5

pytestmark = pytest.mark.unit

VOCAB, SEQ_LEN = 500, 64


def test_debug_gpt2_matches_hand_count():
    model = build_model("clm", ModelConfig(size="debug"), VOCAB, SEQ_LEN, {"eos": 1})
    d, layers, ffn = 64, 2, 256
    per_layer = (
        (d * 3 * d + 3 * d)  # attention qkv projection
        + (d * d + d)  # attention output projection
        + (d * ffn + ffn)  # MLP up
        + (ffn * d + d)  # MLP down
        + 2 * 2 * d  # two LayerNorms
    )
    # Every matmul weight, the final LayerNorm, and the tied token embedding used as the output head;
    # not the position embedding (a lookup).
    matmul = layers * per_layer + 2 * d + VOCAB * d
    assert sum(p.numel() for p in model.parameters()) == matmul + SEQ_LEN * d
    assert matmul_parameters(model) == matmul
    assert model_flops_per_token(model, SEQ_LEN) == 6 * matmul + 12 * layers * d * SEQ_LEN


def test_bert_leaves_out_lookup_embeddings_but_counts_tied_head():
    model = build_model("mlm", ModelConfig(size="debug"), VOCAB, SEQ_LEN, {"mask": 4})
    embeddings = model.bert.embeddings
    lookups = sum(
        module.weight.numel()
        for module in (
            embeddings.word_embeddings,
            embeddings.position_embeddings,
            embeddings.token_type_embeddings,
        )
    )
    total = sum(p.numel() for p in model.parameters())
    assert matmul_parameters(model) == total - lookups + VOCAB * 64


def test_flops_formula():
    assert flops_per_token(1000, num_layers=2, hidden_size=8, seq_len=16) == 6000 + 12 * 2 * 8 * 16


# FlopCounterMode counts 2·m·k·n per aten mm/addmm/bmm/baddbmm (bias adds left out) and the CUDA
# sdpa kernels; it has no formula for CPU sdpa (_scaled_dot_product_flash_attention_for_cpu), so the
# reference models run eager attention, whose QK^T and AV are plain bmm calls counted in full.
REALISTIC_VOCAB, ENCODER_LEN, TARGET_LEN, BATCH = 2000, 64, 16, 2
SPECIAL_IDS = {"pad": 0, "eos": 1, "mask": 4}
BUILDERS = {"gpt2": build_gpt2, "bert": build_bert, "t5": build_t5}


def _eager_model(architecture: str, size: str):
    torch.manual_seed(0)
    model = BUILDERS[architecture](ModelConfig(size=size), REALISTIC_VOCAB, ENCODER_LEN, SPECIAL_IDS)
    model.set_attn_implementation("eager")
    return model


def _counted_flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _vector_parameters(module) -> int:
    """Biases and norm scales: counted by our 6N, not by FlopCounterMode (no matmul)."""
    return sum(param.numel() for param in module.parameters() if param.dim() == 1)


def _training_step(model, architecture: str) -> int:
    inputs = torch.randint(5, REALISTIC_VOCAB, (BATCH, ENCODER_LEN))
    targets = torch.randint(5, REALISTIC_VOCAB, (BATCH, TARGET_LEN))
    labels = targets if architecture == "t5" else inputs
    return _counted_flops(lambda: model(input_ids=inputs, labels=labels).loss.backward()) // BATCH


@pytest.mark.parametrize("size", ["debug", "tiny"])
@pytest.mark.parametrize("architecture", ["gpt2", "bert", "t5"])
def test_training_flops_match_flop_counter(architecture, size):
    model = _eager_model(architecture, size)
    is_t5 = architecture == "t5"
    ours = training_flops_per_example(model, ENCODER_LEN, TARGET_LEN if is_t5 else None)
    measured = _training_step(model, architecture)
    assert ours == pytest.approx(measured, rel=0.05)
    # Exact once the vectors are set aside, so the per-token bookkeeping (T5's cross-attention keys
    # and values run on encoder tokens, the MLM head transform, the tied heads) cannot drift unseen.
    if is_t5:
        vectors = ENCODER_LEN * _vector_parameters(model.encoder) + TARGET_LEN * _vector_parameters(
            model.decoder
        )
    else:
        vectors = ENCODER_LEN * _vector_parameters(model)
    assert ours - 6 * vectors == measured


def test_t5_flops_per_token_are_per_encoder_token():
    model = _eager_model("t5", "debug")
    per_example = training_flops_per_example(model, ENCODER_LEN, TARGET_LEN)
    assert model_flops_per_token(model, ENCODER_LEN, TARGET_LEN) == per_example // ENCODER_LEN
    assert model_flops_per_token(model, ENCODER_LEN, 2 * TARGET_LEN) > per_example // ENCODER_LEN
    with pytest.raises(ValueError, match="target_len"):
        model_flops_per_token(model, ENCODER_LEN)


def test_single_stack_models_reject_target_len():
    model = _eager_model("gpt2", "debug")
    with pytest.raises(ValueError, match="target_len"):
        training_flops_per_example(model, ENCODER_LEN, TARGET_LEN)
    assert training_flops_per_example(model, ENCODER_LEN) == ENCODER_LEN * model_flops_per_token(
        model, ENCODER_LEN
    )


CONTEXT_LEN = 48


@pytest.mark.parametrize("size", ["debug", "tiny"])
@torch.no_grad()
def test_decoder_only_kv_cache_step_matches_flop_counter(size):
    model = _eager_model("gpt2", size).eval()
    tokens = torch.randint(5, REALISTIC_VOCAB, (BATCH, CONTEXT_LEN))
    cache = model(input_ids=tokens[:, :-1], use_cache=True).past_key_values
    measured = _counted_flops(lambda: model(input_ids=tokens[:, -1:], past_key_values=cache, use_cache=True))
    assert inference_flops_per_token(model, CONTEXT_LEN) == pytest.approx(measured // BATCH, rel=0.05)


@pytest.mark.parametrize("size", ["debug", "tiny"])
@torch.no_grad()
def test_masked_lm_generation_reencodes_the_context(size):
    model = _eager_model("bert", size).eval()
    tokens = torch.randint(5, REALISTIC_VOCAB, (BATCH, CONTEXT_LEN))
    measured = _counted_flops(lambda: model(input_ids=tokens))
    assert inference_flops_per_token(model, CONTEXT_LEN) == pytest.approx(measured // BATCH, rel=0.05)


@pytest.mark.parametrize("size", ["debug", "tiny"])
@torch.no_grad()
def test_t5_decoder_step_and_encoder_match_flop_counter(size):
    model = _eager_model("t5", size).eval()
    source = torch.randint(5, REALISTIC_VOCAB, (BATCH, ENCODER_LEN))
    decoded = torch.randint(5, REALISTIC_VOCAB, (BATCH, CONTEXT_LEN))
    outputs = {}
    encoder_flops = _counted_flops(lambda: outputs.update(encoded=model.get_encoder()(input_ids=source)))
    # The first decoder call projects the encoder output to cross-attention keys/values, once.
    first_flops = _counted_flops(
        lambda: outputs.update(
            first=model(encoder_outputs=outputs["encoded"], decoder_input_ids=decoded[:, :1], use_cache=True)
        )
    )
    once = encoder_inference_flops(model, ENCODER_LEN) + inference_flops_per_token(model, 1, ENCODER_LEN)
    assert once == pytest.approx((encoder_flops + first_flops) // BATCH, rel=0.05)
    cache = model(
        encoder_outputs=outputs["encoded"],
        decoder_input_ids=decoded[:, 1:-1],
        past_key_values=outputs["first"].past_key_values,
        use_cache=True,
    ).past_key_values
    assert cache.get_seq_length() == CONTEXT_LEN - 1
    step = _counted_flops(
        lambda: model(
            encoder_outputs=outputs["encoded"],
            decoder_input_ids=decoded[:, -1:],
            past_key_values=cache,
            use_cache=True,
        )
    )
    ours = inference_flops_per_token(model, CONTEXT_LEN, encoder_len=ENCODER_LEN)
    assert ours == pytest.approx(step // BATCH, rel=0.05)


def test_masked_lm_generation_costs_far_more_than_a_cached_step():
    gpt2, bert = _eager_model("gpt2", "debug"), _eager_model("bert", "debug")
    assert inference_flops_per_token(bert, CONTEXT_LEN) > 10 * inference_flops_per_token(gpt2, CONTEXT_LEN)
    with pytest.raises(ValueError, match="encoder_len"):
        inference_flops_per_token(gpt2, CONTEXT_LEN, encoder_len=ENCODER_LEN)


def test_matmul_peak_is_plausible_for_cpu():
    torch.manual_seed(0)
    peak = measure_matmul_peak(torch.float32, seconds=0.3, size=256)
    # Any CPU core does more than 1 GFLOP/s and less than 10 TFLOP/s of fp32 matmul.
    assert 1e9 < peak < 1e13


def test_peak_benchmark_leaves_global_rng_alone():
    # Dropout draws from the global generator: a re-measured peak must not change the masks.
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    measure_matmul_peak(torch.float32, seconds=0.01, size=32, repeats=2)
    assert torch.equal(torch.rand(4), expected)


def test_low_peak_is_measured_again_then_flagged():
    readings = iter([0.5e9, 40e9])
    assert checked_peak(lambda: next(readings), floor=1e9) == (40e9, False)
    readings = iter([0.7e9, 0.6e9])  # emulated bf16 on an AVX2-only CPU stays low
    assert checked_peak(lambda: next(readings), floor=1e9) == (0.7e9, True)
    calls = []
    assert checked_peak(lambda: calls.append(1) or 90e9, floor=1e9) == (90e9, False)
    assert len(calls) == 1  # a plausible peak is measured once


def test_peak_floor_depends_on_dtype_threads_and_nominal_peak():
    threads = torch.get_num_threads()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert plausible_peak_floor(cpu, "fp32") == MIN_PLAUSIBLE_PEAK[("cpu", "fp32")] * threads
    # Emulated bf16 (0.7-1.2 GFLOP/s per thread on AVX2) is below the bf16 floor; native is far above.
    assert 1.2e9 * threads < plausible_peak_floor(cpu, "bf16") < 1e11 * threads
    assert plausible_peak_floor(cuda, "bf16") == MIN_PLAUSIBLE_PEAK[("cuda", "bf16")]
    assert plausible_peak_floor(cuda, "bf16", nominal=989e12) == pytest.approx(98.9e12)


@pytest.mark.parametrize(
    ("name", "precision", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA L40", "bf16", None),  # not "L4": names match on whole tokens
        ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 units
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("cpu", "fp32", None),
    ],
)
def test_nominal_peaks_by_device_name(name, precision, expected):
    assert nominal_peak(name, precision) == expected
