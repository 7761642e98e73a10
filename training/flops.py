"""Model FLOPs (PaLM-style 6N + attention) for training and generation, a measured matmul peak and nominal
GPU peaks for MFU."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
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


# Conventions shared by every count below (PaLM appendix B, Chinchilla): a matmul of an [m, k] by a
# [k, n] matrix is 2·m·k·n FLOPs; a backward pass is twice its forward (gradients of inputs and of
# weights), hence 6 per parameter per token in training and 2 in inference. Every non-embedding
# parameter is counted as if it were a matmul weight, biases and norm scales included: 1-2% over
# an exact matmul count at the debug size, less as models grow. Attention scores (QK^T) and values
# (AV) are counted in full, causal masking not subtracted. Not counted: embedding lookups, relative
# position bias, the arithmetic of layer norms, softmax, activations, dropout, residual adds, T5's
# d_model**-0.5 rescaling before its tied head, the loss.


def model_flops_per_token(model: nn.Module, seq_len: int, target_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per input token.

    Decoder-only and encoder-only models: 6N + 12·L·d·S. Encoder-decoder models (T5): the FLOPs of
    one example with `seq_len` encoder and `target_len` decoder tokens, divided by `seq_len` (rounded
    down): T5 counts pre-training tokens on the encoder side.
    """
    return training_flops_per_example(model, seq_len, target_len) // seq_len


def training_flops_per_example(model: nn.Module, seq_len: int, target_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) of one example of `seq_len` tokens.

    Encoder-decoder models need `target_len`, the decoder length. Per encoder token: the encoder's
    matmul parameters and the decoder's cross-attention key/value projections (they read the encoder
    output); per decoder token: every other decoder parameter and the output head. Attention:
    12·inner·(L_enc·S_enc² + L_dec·S_dec² + L_dec·S_dec·S_enc) with inner = heads·d_kv.
    """
    config: Any = model.config
    if not config.is_encoder_decoder:
        if target_len is not None:
            raise ValueError(
                f"target_len is for encoder-decoder models; {type(model).__name__} has one stack"
            )
        num_layers, inner = _layers_and_inner(config)
        return seq_len * flops_per_token(matmul_parameters(model), num_layers, inner, seq_len)
    if target_len is None:
        raise ValueError(f"{type(model).__name__} is an encoder-decoder model: pass target_len")
    counts = _encoder_decoder_counts(model)
    matmuls = 6 * (counts.per_encoder_token * seq_len + counts.per_decoder_token * target_len)
    encoder_attention = counts.num_encoder_layers * seq_len**2
    decoder_attention = counts.num_decoder_layers * (target_len**2 + target_len * seq_len)
    return matmuls + 12 * counts.inner * (encoder_attention + decoder_attention)


def inference_flops_per_token(model: nn.Module, context_len: int, encoder_len: int | None = None) -> int:
    """Forward FLOPs to generate one token, `context_len` positions (the new one included) in view.

    Decoder-only, with a KV cache of context_len - 1 positions: 2N + 4·L·inner·context_len.
    Encoder-only (masked LM, no cache): each new token re-encodes the context, a forward over
    context_len tokens: 2N·context_len + 4·L·inner·context_len² (the head runs on every position,
    as Hugging Face models do). Encoder-decoder, with a self-attention cache and cached
    cross-attention keys/values: decoder and head parameters 2N_dec, self-attention over
    context_len decoder positions, cross-attention over `encoder_len` (default context_len)
    encoder outputs. The encoder runs once per sequence and is not included: see
    `encoder_inference_flops`.
    """
    hf_model: Any = model
    if hf_model.config.is_encoder_decoder:
        counts = _encoder_decoder_counts(model)
        encoder_len = context_len if encoder_len is None else encoder_len
        attention = 4 * counts.num_decoder_layers * counts.inner * (context_len + encoder_len)
        return 2 * counts.per_decoder_token + attention
    if encoder_len is not None:
        raise ValueError(f"encoder_len is for encoder-decoder models; {type(model).__name__} has one stack")
    num_layers, inner = _layers_and_inner(hf_model.config)
    forward = 2 * matmul_parameters(model) + 4 * num_layers * inner * context_len
    # Hugging Face marks left-to-right decoders (GPT-2, BertLMHeadModel) as able to generate.
    return forward if hf_model.can_generate() else forward * context_len


def encoder_inference_flops(model: nn.Module, encoder_len: int) -> int:
    """Forward FLOPs an encoder-decoder model spends once per generated sequence: the encoder over
    `encoder_len` tokens and the decoder's cross-attention keys/values of its output."""
    counts = _encoder_decoder_counts(model)
    attention = 4 * counts.num_encoder_layers * counts.inner * encoder_len**2
    return 2 * counts.per_encoder_token * encoder_len + attention


def _layers_and_inner(config: Any) -> tuple[int, int]:
    num_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden_size = getattr(config, "hidden_size", None) or config.n_embd
    return num_layers, hidden_size


@dataclass(frozen=True)
class _EncoderDecoderCounts:
    # Matmul parameters applied once per encoder token: the encoder and the decoder's cross-attention
    # key/value projections (they read the encoder output). Per decoder token: the rest of the
    # decoder and the output head.
    per_encoder_token: int
    per_decoder_token: int
    num_encoder_layers: int
    num_decoder_layers: int
    inner: int  # num_heads · d_kv, the width of queries, keys and values


# Cross-attention key/value projections: T5 names them EncDecAttention.k/.v, BART encoder_attn.k_proj.
_CROSS_KEY_VALUE = re.compile(r"(EncDecAttention\.[kv]|encoder_attn\.[kv]_proj)$")


def _encoder_decoder_counts(model: Any) -> _EncoderDecoderCounts:
    encoder, decoder, config = model.get_encoder(), model.get_decoder(), model.config
    cross = {
        id(param): param
        for name, module in decoder.named_modules()
        if _CROSS_KEY_VALUE.search(name)
        for param in module.parameters()
    }
    if not cross:
        raise ValueError(f"no cross-attention key/value projections found in {type(model).__name__}")
    cross_key_value = sum(param.numel() for param in cross.values())
    encoder_total, decoder_total = _non_embedding_parameters(encoder), _non_embedding_parameters(decoder)
    head = matmul_parameters(model) - encoder_total - decoder_total
    return _EncoderDecoderCounts(
        per_encoder_token=encoder_total + cross_key_value,
        per_decoder_token=decoder_total - cross_key_value + head,
        num_encoder_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        inner=config.num_heads * config.d_kv,
    )


def _non_embedding_parameters(module: nn.Module) -> int:
    unique = {id(param): param for param in module.parameters()}
    for child in module.modules():
        if isinstance(child, nn.Embedding):
            unique.pop(id(child.weight), None)
    return sum(param.numel() for param in unique.values())


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


def counted_training_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs torch's own counter (`torch.utils.flop_counter`) sees in one forward + backward of
    `model(**inputs)` (the loss is the logits' sum): an independent check of the analytic counts
    above, which it should match up to what they leave out or add (see the conventions above).

    The count runs with eager attention: torch 2.13's counter has no formula for the CPU SDPA
    kernel (`_scaled_dot_product_flash_attention_for_cpu`), so under SDPA it silently leaves the
    attention matmuls out (7-11% of a small GPT-2's FLOPs). Eager attention does the same matmuls.
    """
    from torch.utils.flop_counter import FlopCounterMode

    hf_model: Any = model
    attention = getattr(hf_model.config, "_attn_implementation", None)
    if attention not in (None, "eager"):
        hf_model.set_attn_implementation("eager")
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            output = model(**inputs)
            logits = output.logits if hasattr(output, "logits") else output
            logits.float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        if attention not in (None, "eager"):
            hf_model.set_attn_implementation(attention)
    return int(counter.get_total_flops())
