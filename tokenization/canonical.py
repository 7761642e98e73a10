"""Deterministic vocabularies from tokenizers' trainers, which are not all run-to-run deterministic.

tokenizers 0.23 iterates hash maps while building WordPiece and Unigram vocabularies: the same
corpus gives WordPiece vocabularies with shuffled ids and, at tied merge counts, different tokens,
and Unigram pieces with different scores, in each process. WordPiece is therefore built from a
deterministic BPE run and numbered canonically; Unigram scores are canonicalised after training.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

# Unigram scores carry ~1e-15 summation noise between runs; 6 decimals sits far above it and far
# below the gaps that decide a segmentation.
UNIGRAM_SCORE_DECIMALS = 6
# The Unigram trainer's `min_score_penalty_delta`: characters the model never kept get scores
# min_score, min_score + delta, min_score + 2 delta, ... in hash-set order (trainer.rs `finalize`).
UNIGRAM_PENALTY_STEP = 0.0001


def canonical_wordpiece_vocab(tokens: Iterable[str], specials: Sequence[str]) -> dict[str, int]:
    """Token -> id with `specials` first in their given order, then every other token sorted.

    Longest-match WordPiece encoding depends on the token set only, so renumbering keeps encodings.
    """
    rest = sorted(set(tokens) - set(specials))
    return {token: index for index, token in enumerate([*specials, *rest])}


def canonical_unigram_pieces(
    pieces: Sequence[tuple[str, float]], specials: Sequence[str]
) -> list[tuple[str, float]]:
    """Specials (score 0) then pieces by descending rounded score, ties by piece string.

    The trainer hands the required characters it did not keep the scores floor + k * step in an
    arbitrary order; here those scores are dealt out again in sorted-character order. The k = 0
    character cannot be told apart from model pieces that sit exactly on the floor, so every
    single-character piece on the floor joins the group that is re-dealt. All of them are characters
    the model found rarest, so this only reorders near-equal scores of rare characters.
    """
    scores = {piece: score for piece, score in pieces if piece not in specials}
    floor = min(scores.values())
    by_score: dict[float, list[str]] = defaultdict(list)
    for piece, score in scores.items():
        by_score[score].append(piece)

    # Recompute the trainer's scores exactly as it does (float accumulation), so equality is exact.
    block_values: list[float] = []
    penalty = 0.0
    while True:
        penalty += UNIGRAM_PENALTY_STEP
        if len(by_score.get(floor + penalty, ())) != 1:
            break
        block_values.append(floor + penalty)
    block = {by_score[value][0] for value in block_values}

    floor_rounded = round(floor, UNIGRAM_SCORE_DECIMALS)
    on_floor = {
        piece
        for piece, score in scores.items()
        if len(piece) == 1 and round(score, UNIGRAM_SCORE_DECIMALS) == floor_rounded
    }
    group = sorted(block | on_floor)
    values = sorted([floor] * (len(group) - len(block)) + block_values, reverse=True)
    scores.update(zip(group, values, strict=True))

    rounded = [(piece, round(score, UNIGRAM_SCORE_DECIMALS)) for piece, score in scores.items()]
    rounded.sort(key=lambda item: (-item[1], item[0]))
    return [(token, 0.0) for token in specials] + rounded


def wordpiece_tokens_from_marked_bpe(
    bpe_vocab: dict[str, int], max_tokens: int, marker: str, prefix: str = "##"
) -> set[str]:
    """WordPiece tokens from a BPE vocabulary trained on words that start with `marker`.

    Every character appears in both forms (`c`, `##c`) so any word can be spelled; then merges are
    taken in merge order (BPE ids) while the set stays within `max_tokens`: `<marker>abc` -> `abc`,
    `bc` -> `##bc`. The result depends only on the BPE vocabulary, which is deterministic.
    """
    ordered = sorted(bpe_vocab, key=bpe_vocab.__getitem__)
    # The marker itself is kept as a character too, so a literal U+2581 in text stays encodable.
    alphabet = [token for token in ordered if len(token) == 1]
    tokens = set(alphabet) | {prefix + char for char in alphabet}
    for token in ordered:
        if len(token) == 1:
            continue
        if len(tokens) >= max_tokens:
            break
        tokens.add(token[len(marker) :] if token.startswith(marker) else prefix + token)
    return tokens
