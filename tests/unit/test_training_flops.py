"""FLOPs per token against a hand count of the debug GPT-2, and the matmul peak benchmark."""

from __future__ import annotations

import pytest
import torch

from lmforge.training import ModelConfig, build_model
from lmforge.training.flops import (
    flops_per_token,
    matmul_parameters,
    measure_matmul_peak,
    model_flops_per_token,
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
