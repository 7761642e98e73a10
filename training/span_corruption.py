"""T5 span corruption (Raffel et al. 2020) as plain tensor functions: fixed lengths, no padding.

Follows T5's `random_spans_noise_mask` / `random_spans_helper` and Hugging Face's
`run_t5_mlm_flax.py`: a row of `raw_length` tokens loses `num_noise_tokens` tokens in
`num_noise_spans` spans; the input keeps the rest with one sentinel per span, the target lists
each sentinel followed by its span, and both end in EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _validate_rates(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if not mean_noise_span_length >= 1:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")


def _check_segmentable(length: int, num_noise_tokens: int, num_noise_spans: int) -> None:
    # Every noise span and every non-noise span is non-empty, so each part needs a token per span.
    num_nonnoise_tokens = length - num_noise_tokens
    if not 1 <= num_noise_tokens <= length - 1:
        raise ValueError(
            f"num_noise_tokens must be in [1, {length - 1}] for length {length}, got {num_noise_tokens}"
        )
    if not 1 <= num_noise_spans <= min(num_noise_tokens, num_nonnoise_tokens):
        raise ValueError(
            f"cannot split {num_noise_tokens} noise and {num_nonnoise_tokens} non-noise tokens into "
            f"{num_noise_spans} non-empty spans each (length {length}); lower noise_density or raise "
            "mean_noise_span_length"
        )


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a row of `length` tokens, rounded and clamped as T5 does."""
    if length < 2:
        raise ValueError(f"length must be >= 2 (one noise and one non-noise token), got {length}")
    _validate_rates(noise_density, mean_noise_span_length)
    # Python's round() is round-half-to-even, like tf.round and np.round in T5 and Hugging Face.
    num_noise_tokens = min(max(int(round(length * noise_density)), 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    return num_noise_tokens, num_noise_spans


def corrupted_lengths(
    raw_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(encoder_length, target_length) after corrupting `raw_length` tokens; both count one EOS."""
    num_noise_tokens, num_noise_spans = noise_counts(raw_length, noise_density, mean_noise_span_length)
    encoder_length = raw_length - num_noise_tokens + num_noise_spans + 1
    target_length = num_noise_tokens + num_noise_spans + 1
    return encoder_length, target_length


def raw_length_for(
    encoder_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(raw_length, target_length): the largest raw length that corrupts to exactly `encoder_length`.

    T5's `random_spans_helper` gives (568, 114) for (512, 0.15, 3.0).
    """
    if encoder_length < 2:
        raise ValueError(f"encoder_length must be >= 2, got {encoder_length}")
    _validate_rates(noise_density, mean_noise_span_length)

    def encoder_length_of(raw_length: int) -> int:
        return corrupted_lengths(raw_length, noise_density, mean_noise_span_length)[0]

    # Encoder length never decreases as raw length grows, and it is at most raw_length + 1, so
    # bisect for the largest raw length whose encoder length is <= the goal.
    low = max(encoder_length - 1, 2)
    if encoder_length_of(low) > encoder_length:
        raise ValueError(
            f"no raw length corrupts to encoder_length {encoder_length} at noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length}; nearest achievable: none below, "
            f"{encoder_length_of(low)} above"
        )
    high = low + 1
    while encoder_length_of(high) <= encoder_length:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if encoder_length_of(middle) <= encoder_length:
            low = middle
        else:
            high = middle
    achieved, target_length = corrupted_lengths(low, noise_density, mean_noise_span_length)
    if achieved != encoder_length:
        raise ValueError(
            f"no raw length corrupts to encoder_length {encoder_length} at noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length}; nearest achievable: {achieved} below, "
            f"{encoder_length_of(high)} above"
        )
    _check_segmentable(low, *noise_counts(low, noise_density, mean_noise_span_length))
    return low, target_length


def _random_segmentation(
    batch_size: int, num_items: int, num_segments: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch_size, num_segments] lengths of a uniformly random composition of num_items into parts >= 1."""
    if num_segments == 1:
        return torch.full((batch_size, 1), num_items, dtype=torch.long)
    # T5 shuffles (num_segments - 1) ones among (num_items - 1) slots: a uniform random subset of
    # segment starts. Ranking float64 uniforms draws that subset for every row at once.
    keys = torch.rand(batch_size, num_items - 1, generator=generator, dtype=torch.float64)
    starts = keys.argsort(dim=1)[:, : num_segments - 1].sort(dim=1).values + 1
    bounds = torch.cat(
        [
            torch.zeros(batch_size, 1, dtype=torch.long),
            starts,
            torch.full((batch_size, 1), num_items, dtype=torch.long),
        ],
        dim=1,
    )
    return bounds.diff(dim=1)


def _noise_masks(
    batch_size: int, length: int, num_noise_tokens: int, num_noise_spans: int, generator: torch.Generator
) -> torch.Tensor:
    _check_segmentable(length, num_noise_tokens, num_noise_spans)
    noise_lengths = _random_segmentation(batch_size, num_noise_tokens, num_noise_spans, generator)
    nonnoise_lengths = _random_segmentation(batch_size, length - num_noise_tokens, num_noise_spans, generator)
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=2).reshape(
        batch_size, 2 * num_noise_spans
    )
    span_starts = interleaved.cumsum(dim=1)[:, :-1]
    span_start_indicator = torch.zeros(batch_size, length, dtype=torch.long)
    span_start_indicator.scatter_(1, span_starts, 1)
    return span_start_indicator.cumsum(dim=1) % 2 == 1


def noise_mask(
    length: int, num_noise_tokens: int, num_noise_spans: int, generator: torch.Generator
) -> torch.Tensor:
    """Bool [length] mask of T5 noise spans: non-noise and noise spans alternate, non-noise first.

    Both parts are split into `num_noise_spans` non-empty spans by uniformly random compositions;
    all randomness comes from the CPU `generator`.
    """
    return _noise_masks(1, length, num_noise_tokens, num_noise_spans, generator)[0]


def corrupt_spans(
    raw: torch.Tensor,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float,
    mean_noise_span_length: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt int [B, L] rows (no EOS) into (input_ids [B, encoder_length], labels [B, target_length]).

    Each row gets a fresh noise mask; noise span k becomes `sentinel_ids[k]` in the input, and the
    labels hold `sentinel_ids[k]` then span k's tokens for every k. Both end in `eos_id`; every row
    has the lengths `corrupted_lengths(L, ...)` gives. Masks are drawn on CPU with `generator`.
    """
    if raw.dim() != 2 or raw.dtype.is_floating_point or raw.dtype.is_complex or raw.dtype == torch.bool:
        raise ValueError(f"raw must be an integer tensor [batch, length], got {raw.dtype} {tuple(raw.shape)}")
    batch_size, length = raw.shape
    num_noise_tokens, num_noise_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if len(sentinel_ids) < num_noise_spans:
        raise ValueError(
            f"span corruption of length {length} needs {num_noise_spans} sentinel ids, "
            f"the tokenizer has {len(sentinel_ids)}"
        )
    ids = raw.to(device="cpu", dtype=torch.long)
    is_noise = _noise_masks(batch_size, length, num_noise_tokens, num_noise_spans, generator)
    previous_is_noise = torch.nn.functional.pad(is_noise[:, :-1], (1, 0), value=False)
    span_start = is_noise & ~previous_is_noise
    span_index = (span_start.cumsum(dim=1) - 1).clamp(min=0)
    sentinels = torch.tensor(list(sentinel_ids[:num_noise_spans]), dtype=torch.long)[span_index]

    # Every row keeps the same number of positions, so boolean selection reshapes to [B, n].
    input_keep = ~is_noise | span_start
    input_body = torch.where(is_noise, sentinels, ids)[input_keep].view(
        batch_size, length - num_noise_tokens + num_noise_spans
    )
    # Labels: at each position, a sentinel slot (span starts) then a token slot (noise tokens).
    label_slots = torch.stack([sentinels, ids], dim=2).view(batch_size, 2 * length)
    label_keep = torch.stack([span_start, is_noise], dim=2).view(batch_size, 2 * length)
    label_body = label_slots[label_keep].view(batch_size, num_noise_tokens + num_noise_spans)

    eos = torch.full((batch_size, 1), eos_id, dtype=torch.long)
    input_ids = torch.cat([input_body, eos], dim=1)
    labels = torch.cat([label_body, eos], dim=1)
    return input_ids.to(raw.device), labels.to(raw.device)
