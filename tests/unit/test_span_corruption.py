"""T5 span corruption against its definition: T5's rounding, uniform random spans, exact reconstruction."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.training.span_corruption import (
    corrupt_spans,
    corrupted_lengths,
    noise_counts,
    noise_mask,
    raw_length_for,
)

pytestmark = pytest.mark.unit

EOS_ID = 1
# T5's sentinels count down from the top of the vocabulary: <extra_id_0> = 32099, <extra_id_1> = 32098...
SENTINEL_IDS = [32099 - k for k in range(100)]
SIGMAS = 5
# (rows, raw length, noise_density, mean_noise_span_length): T5's default, odd settings, short rows.
CASES = [
    (200, 568, 0.15, 3.0),
    (100, 333, 0.3, 2.0),
    (100, 101, 0.5, 1.0),
    (100, 57, 0.15, 3.0),
    (50, 9, 0.3, 2.0),
    (50, 3, 0.15, 3.0),
    (50, 2, 0.5, 3.0),
]


def unpack(input_row: list[int], labels_row: list[int], sentinel_ids: list[int], eos_id: int):
    """(raw tokens, noise flags, sentinels in input order, sentinels in label order) of one example."""
    assert input_row[-1] == eos_id and labels_row[-1] == eos_id
    sentinel_set = set(sentinel_ids)
    spans: list[list[int]] = []
    label_sentinels = []
    for token in labels_row[:-1]:
        if token in sentinel_set:
            label_sentinels.append(token)
            spans.append([])
        else:
            spans[-1].append(token)
    tokens: list[int] = []
    is_noise: list[bool] = []
    input_sentinels = []
    for token in input_row[:-1]:
        if token in sentinel_set:
            span = spans[len(input_sentinels)]
            input_sentinels.append(token)
            tokens += span
            is_noise += [True] * len(span)
        else:
            tokens.append(token)
            is_noise.append(False)
    return tokens, is_noise, input_sentinels, label_sentinels


def reconstruct(
    input_row: list[int], labels_row: list[int], sentinel_ids: list[int], eos_id: int
) -> list[int]:
    """The raw row that an (input, labels) pair was corrupted from."""
    return unpack(input_row, labels_row, sentinel_ids, eos_id)[0]


def raw_rows(rows: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, 32000, (rows, length), generator=generator)


def span_lengths(is_noise: list[bool]) -> tuple[list[int], list[int]]:
    """(non-noise span lengths, noise span lengths) in order."""
    runs: list[list[int]] = [[], []]
    previous = None
    for flag in is_noise:
        if flag == previous:
            runs[flag][-1] += 1
        else:
            runs[flag].append(1)
        previous = flag
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def corrupted():
    results = []
    for seed, (rows, length, density, mean) in enumerate(CASES):
        raw = raw_rows(rows, length, seed)
        generator = torch.Generator().manual_seed(100 + seed)
        input_ids, labels = corrupt_spans(raw, SENTINEL_IDS, EOS_ID, density, mean, generator)
        results.append((raw, input_ids, labels, length, density, mean))
    return results


def test_counts_lengths_and_reconstruction(corrupted):
    assert sum(raw.numel() for raw, *_ in corrupted) >= 100_000
    for raw, input_ids, labels, length, density, mean in corrupted:
        assert input_ids.dtype == labels.dtype == torch.int64
        assert (input_ids.shape[1], labels.shape[1]) == corrupted_lengths(length, density, mean)
        num_noise = min(max(int(round(length * density)), 1), length - 1)
        num_spans = max(int(round(num_noise / mean)), 1)
        assert noise_counts(length, density, mean) == (num_noise, num_spans)
        for raw_row, input_row, labels_row in zip(
            raw.tolist(), input_ids.tolist(), labels.tolist(), strict=True
        ):
            tokens, is_noise, input_sentinels, label_sentinels = unpack(
                input_row, labels_row, SENTINEL_IDS, EOS_ID
            )
            assert tokens == raw_row
            assert reconstruct(input_row, labels_row, SENTINEL_IDS, EOS_ID) == raw_row
            assert input_sentinels == label_sentinels == SENTINEL_IDS[:num_spans]
            assert labels_row[0] == SENTINEL_IDS[0]
            assert input_row.count(EOS_ID) == labels_row.count(EOS_ID) == 1
            nonnoise_spans, noise_spans = span_lengths(is_noise)
            assert sum(is_noise) == num_noise
            assert len(noise_spans) == len(nonnoise_spans) == num_spans
            # T5 starts with a non-noise span and alternates, so it also ends with a noise span.
            assert not is_noise[0] and is_noise[-1]


def first_span_pmf(num_items: int, num_segments: int) -> dict[int, float]:
    """Exact law of one part of a uniform random composition: C(n-x-1, k-2) / C(n-1, k-1)."""
    total = math.comb(num_items - 1, num_segments - 1)
    return {
        x: math.comb(num_items - x - 1, num_segments - 2) / total
        for x in range(1, num_items - num_segments + 2)
    }


def composition_part_variance(num_items: int, num_segments: int) -> float:
    """Variance of one part of a uniform random composition of n into k parts >= 1.

    Part = 1 + Y with Y one part of a uniform weak composition of m = n - k into k parts, which is
    Dirichlet-multinomial(m; 1, ..., 1): Var Y = m p (1 - p) (m + k) / (1 + k) with p = 1 / k.
    """
    m, k = num_items - num_segments, num_segments
    return m * (k - 1) * (m + k) / (k * k * (k + 1))


@pytest.mark.parametrize(("num_items", "num_segments"), [(85, 28), (483, 28), (10, 3), (7, 7), (30, 2)])
def test_variance_formula_matches_exact_pmf(num_items, num_segments):
    pmf = first_span_pmf(num_items, num_segments)
    mean = sum(x * p for x, p in pmf.items())
    variance = sum((x - mean) ** 2 * p for x, p in pmf.items())
    assert sum(pmf.values()) == pytest.approx(1.0)
    assert mean == pytest.approx(num_items / num_segments)
    assert variance == pytest.approx(composition_part_variance(num_items, num_segments))


def test_span_lengths_follow_uniform_random_composition():
    rows, length, density, mean = 2000, 568, 0.15, 3.0
    num_noise, num_spans = noise_counts(length, density, mean)
    raw = raw_rows(rows, length, seed=7)
    input_ids, labels = corrupt_spans(
        raw, SENTINEL_IDS, EOS_ID, density, mean, torch.Generator().manual_seed(8)
    )
    sentinels = torch.tensor(SENTINEL_IDS)
    label_positions = torch.isin(labels, sentinels).nonzero()[:, 1].view(rows, num_spans)
    label_bounds = torch.cat([label_positions, torch.full((rows, 1), labels.shape[1] - 1)], dim=1)
    noise_spans = label_bounds.diff(dim=1) - 1
    input_positions = torch.isin(input_ids, sentinels).nonzero()[:, 1].view(rows, num_spans)
    nonnoise_spans = torch.cat([input_positions[:, :1], input_positions.diff(dim=1) - 1], dim=1)
    assert (noise_spans.sum(dim=1) == num_noise).all()
    assert (nonnoise_spans.sum(dim=1) == length - num_noise).all()

    # Pooled over spans the mean is num_noise / num_spans by construction; one span per row, drawn
    # independently across rows, is the statistic that can fail: its mean, spread and P(length 1).
    for spans, num_items in [(noise_spans, num_noise), (nonnoise_spans, length - num_noise)]:
        std = math.sqrt(composition_part_variance(num_items, num_spans))
        pmf = first_span_pmf(num_items, num_spans)
        fourth_moment = sum((x - num_items / num_spans) ** 4 * p for x, p in pmf.items())
        for column in (0, num_spans // 2, num_spans - 1):
            sample = spans[:, column].double()
            assert abs(sample.mean().item() - num_items / num_spans) <= SIGMAS * std / math.sqrt(rows)
            variance_std = math.sqrt((fourth_moment - std**4) / rows)
            assert abs(sample.var().item() - std**2) <= SIGMAS * variance_std
            p_one = pmf[1]
            assert abs((sample == 1).double().mean().item() - p_one) <= SIGMAS * math.sqrt(
                p_one * (1 - p_one) / rows
            )
    assert (noise_spans == 1).any() and (noise_spans >= 6).any()


def test_same_seed_same_output_different_seed_different_masks():
    raw = raw_rows(8, 568, seed=3)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return corrupt_spans(raw, SENTINEL_IDS, EOS_ID, 0.15, 3.0, torch.Generator().manual_seed(seed))

    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0][0], first[0][1])  # rows get fresh masks

    mask = noise_mask(568, 85, 28, torch.Generator().manual_seed(5))
    assert mask.dtype == torch.bool and mask.shape == (568,)
    assert torch.equal(mask, noise_mask(568, 85, 28, torch.Generator().manual_seed(5)))
    assert not torch.equal(mask, noise_mask(568, 85, 28, torch.Generator().manual_seed(6)))
    nonnoise_spans, noise_spans = span_lengths(mask.tolist())
    assert not mask[0] and int(mask.sum()) == 85 and len(noise_spans) == len(nonnoise_spans) == 28


def t5_random_spans_helper(inputs_length: int, noise_density: float, mean_noise_span_length: float):
    """T5's preprocessors.random_spans_helper, transcribed (one extra token per span each side).

    Its noise_density == 0.5 tweak (shorten raw by one when targets outgrow inputs) is left out:
    raw_length_for keeps the encoder length exact instead.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def test_raw_length_for_t5_reference_and_round_trip():
    # Published by T5's random_spans_helper for inputs_length=512, noise_density=0.15, mean=3.0.
    assert raw_length_for(512, 0.15, 3.0) == (568, 114)
    for density, mean in [(0.15, 3.0), (0.3, 2.0), (0.5, 2.0), (0.05, 8.0)]:
        for encoder_length in range(16, 601):
            raw_length, target_length = raw_length_for(encoder_length, density, mean)
            assert corrupted_lengths(raw_length, density, mean) == (encoder_length, target_length)
            assert corrupted_lengths(raw_length + 1, density, mean)[0] > encoder_length
            # T5's helper does not clamp the counts; from 16 up the clamps never bind at these settings.
            if density != 0.05:
                assert (raw_length, target_length) == t5_random_spans_helper(encoder_length, density, mean)


@pytest.mark.parametrize(("density", "mean"), [(0.15, 3.0), (0.3, 2.0), (0.5, 1.0), (0.9, 7.5), (0.01, 1.0)])
def test_encoder_length_grows_by_zero_or_one(density, mean):
    # What makes raw_length_for's bisection exact: only lengths below corrupted_lengths(2) are unreachable.
    encoder_lengths = [corrupted_lengths(raw, density, mean)[0] for raw in range(2, 3000)]
    assert encoder_lengths[0] == 3
    assert {b - a for a, b in zip(encoder_lengths, encoder_lengths[1:], strict=False)} <= {0, 1}


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="encoder_length 2 .*none below, 3 above"):
        raw_length_for(2, 0.15, 3.0)
    with pytest.raises(ValueError, match="encoder_length must be >= 2, got 1"):
        raw_length_for(1, 0.15, 3.0)
    with pytest.raises(ValueError, match=r"noise_density must be in \(0, 1\), got 1.5"):
        raw_length_for(512, 1.5, 3.0)
    with pytest.raises(ValueError, match=r"noise_density must be in \(0, 1\), got 0"):
        noise_counts(100, 0, 3.0)
    with pytest.raises(ValueError, match="mean_noise_span_length must be >= 1, got 0.5"):
        corrupted_lengths(100, 0.15, 0.5)
    with pytest.raises(ValueError, match="length must be >= 2"):
        noise_counts(1, 0.15, 3.0)
    raw = raw_rows(2, 568, seed=0)
    with pytest.raises(ValueError, match="needs 28 sentinel ids, the tokenizer has 10"):
        corrupt_spans(raw, SENTINEL_IDS[:10], EOS_ID, 0.15, 3.0, torch.Generator().manual_seed(0))
    # 80% noise in spans of 1 leaves 20 non-noise tokens to separate 80 spans.
    with pytest.raises(ValueError, match="cannot split 80 noise and 20 non-noise tokens into 80"):
        corrupt_spans(raw_rows(2, 100, seed=0), SENTINEL_IDS, EOS_ID, 0.8, 1.0, torch.Generator())
    with pytest.raises(ValueError, match="cannot split"):
        raw_length_for(100, 0.8, 1.0)
    with pytest.raises(ValueError, match="integer tensor"):
        corrupt_spans(raw.float(), SENTINEL_IDS, EOS_ID, 0.15, 3.0, torch.Generator())
