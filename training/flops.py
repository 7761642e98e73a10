"""Model FLOPs per token (PaLM-style 6N + attention) and a measured matmul peak for MFU."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in a matmul per token.

    Embedding lookups cost no FLOPs, so every nn.Embedding is left out, except a token embedding
    that is tied to the output head: that matrix is multiplied with every hidden state.
    """
    unique = {id(param): param for param in model.parameters()}
    embedding_ids = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, nn.Embedding) and module.weight is not None
    }
    total = sum(param.numel() for pid, param in unique.items() if pid not in embedding_ids)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is not None and id(head.weight) in embedding_ids:
        total += head.weight.numel()
    return total


def flops_per_token(num_matmul_parameters: int, num_layers: int, hidden_size: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for forward + backward matmuls, plus 12·L·d·S for attention
    scores and values (PaLM appendix B; not halved for causal masking, as PaLM counts it)."""
    return 6 * num_matmul_parameters + 12 * num_layers * hidden_size * seq_len


def model_flops_per_token(model: nn.Module, seq_len: int) -> int:
    config: Any = model.config
    num_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden_size = getattr(config, "hidden_size", None) or config.n_embd
    return flops_per_token(matmul_parameters(model), num_layers, hidden_size, seq_len)


def measure_matmul_peak(
    dtype: torch.dtype,
    seconds: float = 2.0,
    device: torch.device | str = "cpu",
    size: int | None = None,
    repeats: int = 1,
) -> float:
    """Best achieved FLOP/s of square matmuls in `dtype` on `device` over `repeats` windows of `seconds`.

    This is the practical peak the MFU denominator uses: it reflects this process's thread count and
    the processes running beside it. Several windows keep a transient hiccup (another process starting
    up) from lowering the peak and so inflating MFU.
    """
    return max(_matmul_flops_per_second(dtype, seconds, torch.device(device), size) for _ in range(repeats))


def _matmul_flops_per_second(
    dtype: torch.dtype, seconds: float, device: torch.device, size: int | None
) -> float:
    size = size or (8192 if device.type == "cuda" else 1024)
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):  # warm-up: kernel selection, caches
        torch.matmul(left, right)
    _synchronize(device)
    iterations = 0
    start = time.perf_counter()
    while True:
        torch.matmul(left, right)
        iterations += 1
        if iterations % 4 == 0 or device.type != "cuda":
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return 2.0 * size**3 * iterations / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
