"""FLOPs per token against a hand count of the debug GPT-2, the matmul peak and its sanity check, nominal peaks."""

from __future__ import annotations

import pytest
import torch

from lmforge.training import ModelConfig, build_model
from lmforge.training.flops import (
    MIN_PLAUSIBLE_PEAK,
    checked_peak,
    flops_per_token,
    matmul_parameters,
    measure_matmul_peak,
    model_flops_per_token,
    nominal_peak,
    plausible_peak_floor,
)

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
