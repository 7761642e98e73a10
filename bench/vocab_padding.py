"""The output head with the vocabulary padded to a multiple (`pretrain.vocab_multiple_of`) vs exact.

    python bench/vocab_padding.py --vocab-sizes 8000 50257 --multiple 64 --repeats 3

Times what the padding changes: the logits matmul (tokens x hidden by hidden x vocabulary) and the
fp32 log-sum-exp the loss takes over it, forward and backward, in the training precision, at the
exact vocabulary and at the padded one, interleaved in the same run. The padded head computes more
columns, so it pays off only where aligned shapes make each column cheaper: the printed ratio is
exact time over padded time (above 1: padding is faster). Medians over `--steps` timed calls after
two warm-up calls; one JSON line per vocabulary size.
"""

from __future__ import annotations

import argparse
import time

import common
import torch

from lmforge.training.config import pad_to_multiple

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def head_seconds(
    tokens: int, hidden: int, vocab: int, dtype: torch.dtype, steps: int, device: torch.device
) -> float:
    """Median seconds of one forward + backward through the head at this vocabulary size."""
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(tokens, hidden, generator=generator).to(device, dtype).requires_grad_()
    weight = torch.randn(vocab, hidden, generator=generator).to(device, dtype).requires_grad_()

    def call() -> None:
        (states @ weight.t()).float().logsumexp(-1).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        call()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[8000, 50257])
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument(
        "--tokens", type=int, default=4096, help="tokens per step (the base model's 16 x 256)"
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    dtype, device = DTYPES[args.precision], torch.device(args.device)
    for vocab in args.vocab_sizes:
        padded = pad_to_multiple(vocab, args.multiple)
        exact_runs, padded_runs = [], []
        for _ in range(args.repeats):
            exact_runs.append(head_seconds(args.tokens, args.hidden, vocab, dtype, args.steps, device))
            padded_runs.append(head_seconds(args.tokens, args.hidden, padded, dtype, args.steps, device))
        ratios = [exact / pad for exact, pad in zip(exact_runs, padded_runs, strict=True)]
        common.emit(
            {
                "benchmark": "vocab_padding",
                "vocab_size": vocab,
                "padded_vocab_size": padded,
                "precision": args.precision,
                "tokens": args.tokens,
                "hidden": args.hidden,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "exact_seconds": common.spread(exact_runs),
                "padded_seconds": common.spread(padded_runs),
                "exact_over_padded": common.spread(ratios),
                "machine": common.machine(),
            }
        )


if __name__ == "__main__":
    main()
