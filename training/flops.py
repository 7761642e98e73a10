"""Model FLOPs per token (PaLM-style 6N + attention), a measured matmul peak and nominal GPU peaks for MFU."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
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
    # A private generator: the global one drives dropout, and a re-measured peak must not shift it.
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
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


# A measured peak below these is not the hardware's: another process held the cores, or the dtype is
# emulated. CPU, per thread: any x86-64 core since AVX (2011) retires >= 8 fp32 FLOP/cycle at >= 2 GHz
# (16 GFLOP/s; ~90 GFLOP/s seen on AVX2 Zen 3), so 1 GFLOP/s leaves 16x room for an old, busy core.
# Native bf16 (AVX512-BF16, AMX) ran at 100-200 GFLOP/s per thread on Zen 5 and emulated bf16 at
# 0.7-1.2 GFLOP/s, so the bf16 floor is 10 GFLOP/s: 10x under native, 8x over emulated. CUDA, per
# GPU: 10% of the datasheet peak where it is known (nominal_peak), else 1 TFLOP/s fp32 and 10 TFLOP/s
# for the 16-bit types (every GPU current PyTorch supports exceeds 5 and 60 TFLOP/s respectively).
MIN_PLAUSIBLE_PEAK = {
    ("cpu", "fp32"): 1e9,
    ("cpu", "bf16"): 1e10,
    ("cuda", "fp32"): 1e12,
    ("cuda", "bf16"): 1e13,
    ("cuda", "fp16"): 1e13,
}
MIN_FRACTION_OF_NOMINAL = 0.1


def plausible_peak_floor(device: torch.device, precision: str, nominal: float | None = None) -> float:
    """The lowest believable matmul FLOP/s in `precision` for this process on `device` (CPU: per torch thread)."""
    if device.type == "cuda":
        return MIN_FRACTION_OF_NOMINAL * nominal if nominal else MIN_PLAUSIBLE_PEAK[("cuda", precision)]
    return MIN_PLAUSIBLE_PEAK[("cpu", precision)] * torch.get_num_threads()


def checked_peak(measure: Callable[[], float], floor: float) -> tuple[float, bool]:
    """`measure()`, measured once more if below `floor`; returns (best peak, still below floor)."""
    peak = measure()
    if peak < floor:
        peak = max(peak, measure())
    return peak, peak < floor


# Dense (no sparsity) datasheet peaks in FLOP/s per GPU. fp32 is the non-tensor-core rate: PyTorch
# leaves TF32 matmuls off by default. Matched on whole name tokens, first match wins, so the more
# specific names come first ("H100 PCIe" before "H100").
NOMINAL_GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51.2e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
)


def nominal_peak(device_name: str, precision: str) -> float | None:
    """Datasheet peak of a GPU named `device_name` in `precision`, None when not in the table (CPUs)."""
    tokens = set(re.findall(r"[A-Za-z0-9]+", device_name))
    for key, peaks in NOMINAL_GPU_PEAKS:
        if set(key.split()) <= tokens:
            return peaks.get(precision)
    return None
