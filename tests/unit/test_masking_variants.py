"""Masking variants against their definitions: whole words, static vs dynamic masks, NSP/SOP pairs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmforge.tokenization import TOKENIZER_ALGORITHMS, TokenizerConfig, load_tokenizer_meta, train_tokenizer
from lmforge.tokenization.word_boundaries import (
    CONTINUATION_RULES,
    continuation_table,
    continuation_table_for,
)
from lmforge.training.config import MaskingConfig
from lmforge.training.masking import IGNORE_INDEX, mask_batch, mask_tokens, masking_generator, word_starts
from lmforge.training.sentence_pairs import make_pairs
from tests.unit.test_tokenization_helpers import write_corpus

pytestmark = pytest.mark.unit

VOCAB_SIZE = 1000
SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "eos": 5}
SPECIAL = torch.tensor(list(SPECIAL_IDS.values()))
SIGMAS = 5
# Non-special ids not divisible by 3 continue a word: words of 3 tokens on average.
CONTINUES = (torch.arange(VOCAB_SIZE) % 3 != 0) & ~torch.isin(torch.arange(VOCAB_SIZE), SPECIAL)


def within_binomial(successes: int, trials: int, p: float) -> bool:
    return abs(successes / trials - p) <= SIGMAS * math.sqrt(p * (1 - p) / trials)


def sample_ids(rows: int, seq_len: int, seed: int = 1234) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_IDS), VOCAB_SIZE, (rows, seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]
    sprinkle = torch.rand(ids.shape, generator=generator) < 0.05
    ids[sprinkle] = SPECIAL_IDS["eos"]
    return ids


def reference_words(ids: torch.Tensor, continues: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Words as lists of (row, position), by the definition: a start plus the continuations after it."""
    words: list[list[tuple[int, int]]] = []
    special = set(SPECIAL_IDS.values())
    for row, sequence in enumerate(ids.tolist()):
        current: list[tuple[int, int]] | None = None
        for position, token in enumerate(sequence):
            if token in special:
                current = None
            elif current is not None and bool(continues[token]):
                current.append((row, position))
            else:
                current = [(row, position)]
                words.append(current)
    return words


# Whole-word masking ------------------------------------------------------------------------------


def test_whole_word_masking_selects_whole_words_at_the_right_rate():
    ids = sample_ids(200, 600)
    config = MaskingConfig()
    masked, labels = mask_tokens(
        ids, SPECIAL_IDS, VOCAB_SIZE, config, masking_generator(0, 0, 0, 0), continues_word=CONTINUES
    )
    selected = labels != IGNORE_INDEX
    words = reference_words(ids, CONTINUES)
    flags = [[bool(selected[row, position]) for row, position in word] for word in words]
    assert all(all(word) or not any(word) for word in flags), "a word was split"
    assert int(selected.sum()) == sum(len(word) for word, f in zip(words, flags, strict=True) if f[0])
    assert not (selected & torch.isin(ids, SPECIAL)).any()

    # Words are selected independently with p: the word count is Binomial(num_words, p) and the token
    # count has mean p * num_tokens and variance p (1 - p) * sum(len(word)^2).
    p = config.mask_probability
    num_selected_words = sum(word[0] for word in flags)
    assert within_binomial(num_selected_words, len(words), p)
    lengths = np.array([len(word) for word in words])
    token_sigma = math.sqrt(p * (1 - p) * float((lengths**2).sum()))
    assert abs(int(selected.sum()) - p * lengths.sum()) <= SIGMAS * token_sigma
    assert (lengths > 1).mean() > 0.5, "the sample must have multi-token words for this test to bite"

    # The 80/10/10 choice stays per token: selected words mix [MASK] and other tokens.
    to_mask = selected & (masked == SPECIAL_IDS["mask"])
    assert within_binomial(int(to_mask.sum()), int(selected.sum()), 0.8)
    mixed = sum(
        1
        for word, f in zip(words, flags, strict=True)
        if f[0] and len({bool(to_mask[row, position]) for row, position in word}) == 2
    )
    assert mixed > 100


def test_word_starts_break_at_special_tokens_and_row_starts():
    # 7, 8, 10, 11 continue; 9, 12 do not; 3 is [SEP].
    ids = torch.tensor([[7, 9, 10, 3, 11, 12, 8]])
    starts = word_starts(ids, ~torch.isin(ids, SPECIAL), CONTINUES)
    assert starts.tolist() == [[True, True, False, False, True, True, False]]
    with pytest.raises(ValueError, match="continues_word has 5 entries"):
        mask_tokens(
            ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), torch.Generator(), continues_word=CONTINUES[:5]
        )


def test_whole_word_masking_of_all_special_rows_selects_nothing():
    ids = torch.full((2, 8), SPECIAL_IDS["pad"])
    _, labels = mask_tokens(
        ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), torch.Generator(), continues_word=CONTINUES
    )
    assert (labels == IGNORE_INDEX).all()


# Continuation tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "vocab", "expected"),
    [
        ("wordpiece", {"[PAD]": 0, "the": 1, "##s": 2, "##": 3, ",": 4, "[CLS]": 5}, [0, 0, 1, 1, 0, 0]),
        (
            "unigram",
            {
                "<pad>": 0,
                "\u2581the": 1,
                "ing": 2,
                ",": 3,
                "\u2581": 4,
                "'s": 5,
                "2016": 6,
                "\u00e9t\u00e9": 7,
            },
            [0, 0, 1, 0, 0, 0, 1, 1],
        ),
        (
            "bpe",
            {
                "<|endoftext|>": 0,
                "\u0120the": 1,  # Ġthe: space then "the"
                "ing": 2,
                ",": 3,
                "\u010a": 4,  # Ċ newline
                "\u0109foo": 5,  # ĉ tab then "foo"
                "123": 6,
                "\u00c3\u00a9": 7,  # é as its two UTF-8 bytes
                "\u00a9": 8,  # the second byte of é alone: mid-character
                "\u00c3": 9,  # lead byte of a Latin-1 letter alone
                "\u00e2\u0122\u0136": 10,  # em dash
                "\u00c2": 11,  # lead byte of Latin-1 punctuation alone
                "'s": 12,
            },
            [0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
        ),
    ],
)
def test_continuation_rules_on_hand_built_vocabularies(algorithm, vocab, expected):
    table = continuation_table(
        vocab, algorithm, {"pad": 0, "cls": len(vocab) - 1} if algorithm == "wordpiece" else [0]
    )
    assert table.dtype == bool and table.astype(int).tolist() == expected


def test_special_tokens_never_continue_and_unknown_algorithm_is_named():
    assert continuation_table({"##x": 0, "##y": 1}, "wordpiece", [1]).tolist() == [True, False]
    assert continuation_table({"a": 0, "##b": 3}, "wordpiece", []).tolist() == [False, False, False, True]
    assert set(CONTINUATION_RULES.names()) == set(TOKENIZER_ALGORITHMS.names())
    with pytest.raises(ValueError, match="unknown tokenizer algorithm 'wordpeice'.*bpe, unigram, wordpiece"):
        continuation_table({"a": 0}, "wordpeice", [])


SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vo", "el", "in", "gra", "pho", "ne", "str", "ul"]
EXTRA_WORDS = ["café", "naïve", "Zürich", "don't", "2016", "A4", "—", "(see", "below)", "x-ray", "e.g."]


def synthetic_text(rng: random.Random, num_words: int) -> str:
    lexicon = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    words = []
    for _ in range(num_words):
        word = rng.choice(EXTRA_WORDS) if rng.random() < 0.08 else lexicon[int(rng.paretovariate(1.2)) % 300]
        words.append(word.capitalize() if rng.random() < 0.1 else word)
        if rng.random() < 0.1:
            words[-1] += rng.choice([",", ".", ";"])
    return " ".join(words)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    rng = random.Random(5)
    docs = [(f"d{index}", synthetic_text(rng, 150)) for index in range(300)]
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), docs)
    sizes = {"bpe": 400, "wordpiece": 400, "unigram": 300}
    root = tmp_path_factory.mktemp("tokenizers")
    for algorithm, vocab_size in sizes.items():
        train_tokenizer(TokenizerConfig(algorithm=algorithm, vocab_size=vocab_size), corpus, root / algorithm)
    return {algorithm: root / algorithm for algorithm in sizes}


@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece", "unigram"])
def test_continuation_table_groups_real_tokens_into_whole_words(algorithm, tokenizer_dirs):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dirs[algorithm] / "tokenizer.json"))
    table = continuation_table_for(tokenizer_dirs[algorithm])
    assert len(table) == tokenizer.get_vocab_size(with_added_tokens=True)
    text = synthetic_text(random.Random(99), 400)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert (
        tokenizer.token_to_id("[UNK]") not in encoding.ids
        and tokenizer.token_to_id("<unk>") not in encoding.ids
    )

    groups: list[list[int]] = []
    for position, token_id in enumerate(encoding.ids):
        if groups and table[token_id]:
            groups[-1].append(position)
        else:
            groups.append([position])
    assert sum(len(group) > 1 for group in groups) > 50, "too few multi-token words for the test to bite"
    normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer else (lambda text: text)
    previous_end = None
    for group in groups:
        start, end = encoding.offsets[group[0]][0], encoding.offsets[group[-1]][1]
        decoded = tokenizer.decode([encoding.ids[position] for position in group]).strip()
        assert decoded == normalize(text[start:end]).strip(), (decoded, text[start:end])
        assert decoded and not any(character.isspace() for character in decoded), f"words merged: {decoded!r}"
        if previous_end == start:
            assert not (text[start - 1].isalnum() and text[start].isalnum()), (
                f"word split at {text[start - 5 : end]!r}"
            )
        previous_end = end

    # Whole-word masking on these tokens selects whole groups.
    ids = torch.tensor([encoding.ids])
    special_ids = dict(load_tokenizer_meta(tokenizer_dirs[algorithm])["special_ids"])
    special_ids.setdefault("mask", special_ids["pad"])  # byte-level BPE has no [MASK]
    _, labels = mask_tokens(
        ids,
        special_ids,
        len(table),
        MaskingConfig(mask_probability=0.3),
        torch.Generator().manual_seed(0),
        continues_word=torch.from_numpy(table),
    )
    selected = (labels[0] != IGNORE_INDEX).tolist()
    assert all(len({selected[position] for position in group}) == 1 for group in groups)
    assert any(selected)


# Static and dynamic masking ----------------------------------------------------------------------


def masks_by_sequence(ids, indices, generator, *, dynamic=False, seed=7, **kwargs):
    masked, labels = mask_batch(
        ids,
        indices,
        SPECIAL_IDS,
        VOCAB_SIZE,
        MaskingConfig(),
        dynamic=dynamic,
        generator=generator,
        seed=seed,
        **kwargs,
    )
    return {int(index): (masked[row], labels[row]) for row, index in enumerate(indices)}


def same_masks(first, second) -> bool:
    return all(
        torch.equal(first[key][0], second[key][0]) and torch.equal(first[key][1], second[key][1])
        for key in first
    )


def test_static_masks_follow_the_sequence_not_the_epoch_batch_or_rank():
    ids = sample_ids(16, 128)
    indices = np.arange(100, 116)
    epoch0 = masks_by_sequence(ids[:8], indices[:8], masking_generator(7, 0, 0, 0))
    # Epoch 1 on another rank: the same sequences, shuffled and mixed with others.
    order = np.array([12, 3, 0, 9, 7, 1, 15, 5, 2, 4, 6])
    epoch1 = masks_by_sequence(ids[order], indices[order], masking_generator(7, 1, 1, 5))
    assert same_masks(epoch0, {key: epoch1[key] for key in epoch0})
    alone = masks_by_sequence(ids[5:6], indices[5:6], masking_generator(7, 2, 3, 9))
    assert same_masks(alone, {105: epoch0[105]})

    # The mask depends on the index, the seed and the split; whole-word static masks are fixed too.
    moved = masks_by_sequence(ids[:8], indices[:8] + 1, masking_generator(7, 0, 0, 0))
    reseeded = masks_by_sequence(ids[:8], indices[:8], masking_generator(7, 0, 0, 0), seed=8)
    validation = masks_by_sequence(ids[:8], indices[:8], masking_generator(7, 0, 0, 0), split="validation")
    for other in (moved, reseeded, validation):
        assert not any(torch.equal(a[1], b[1]) for a, b in zip(epoch0.values(), other.values(), strict=True))
    whole = dict(whole_word=True, continues_word=CONTINUES)
    assert same_masks(
        masks_by_sequence(ids[:8], indices[:8], masking_generator(7, 0, 0, 0), **whole),
        masks_by_sequence(ids[:8], indices[:8], masking_generator(7, 4, 1, 2), **whole),
    )


def test_dynamic_masks_change_every_epoch():
    ids = sample_ids(8, 128)
    indices = np.arange(8)
    epoch0 = masks_by_sequence(ids, indices, masking_generator(7, 0, 0, 0), dynamic=True)
    again = masks_by_sequence(ids, indices, masking_generator(7, 0, 0, 0), dynamic=True)
    epoch1 = masks_by_sequence(ids, indices, masking_generator(7, 1, 0, 0), dynamic=True)
    assert same_masks(epoch0, again)
    assert not any(torch.equal(a[1], b[1]) for a, b in zip(epoch0.values(), epoch1.values(), strict=True))
    # Dynamic masking is mask_tokens with the loop's generator, unchanged.
    _, labels = mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), masking_generator(7, 0, 0, 0))
    assert torch.equal(torch.stack([epoch0[index][1] for index in range(8)]), labels)


def test_static_masking_keeps_the_selection_rate():
    ids = sample_ids(200, 600)
    _, labels = mask_batch(
        ids,
        np.arange(200),
        SPECIAL_IDS,
        VOCAB_SIZE,
        MaskingConfig(),
        dynamic=False,
        generator=torch.Generator(),
        seed=0,
    )
    candidates = int((~torch.isin(ids, SPECIAL)).sum())
    assert within_binomial(int((labels != IGNORE_INDEX).sum()), candidates, 0.15)


def test_mask_batch_errors():
    ids = sample_ids(2, 16)

    def call(indices, **kwargs):
        options = dict(dynamic=False, generator=torch.Generator(), seed=0) | kwargs
        return mask_batch(ids, indices, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), **options)

    with pytest.raises(ValueError, match="one sequence index per row"):
        call(None)
    with pytest.raises(ValueError, match="one sequence index per row"):
        call(np.arange(3))
    with pytest.raises(ValueError, match="clip padding rows"):
        call(np.array([0, -1]))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        call(np.arange(2), split="test")
    with pytest.raises(ValueError, match="needs continues_word"):
        call(np.arange(2), whole_word=True)
    call(None, dynamic=True)  # dynamic masking needs no indices


# Sentence pairs ----------------------------------------------------------------------------------

CLS, SEP, PAD = 2, 3, 0
BASE = 1000


def unique_chunks(rows: int, width: int, seed: int, fixed_length: int | None = None):
    """Row r holds BASE + r * width + position, so every token names its row and position."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (rows,), generator=generator)
    if fixed_length is not None:
        lengths[:] = fixed_length
    chunks = BASE + torch.arange(rows)[:, None] * width + torch.arange(width)
    chunks[torch.arange(width) >= lengths[:, None]] = PAD
    return chunks, lengths


def split_pair(output: dict, row: int) -> tuple[list[int], list[int]]:
    """A and B of one row, after checking the [CLS] A [SEP] B [SEP] pad layout and its masks."""
    ids = output["input_ids"][row].tolist()
    seps = [position for position, token in enumerate(ids) if token == SEP]
    assert ids[0] == CLS and len(seps) == 2
    first, last = seps
    assert all(token == PAD for token in ids[last + 1 :])
    positions = torch.arange(len(ids))
    expected_types = ((positions > first) & (positions <= last)).long()
    assert torch.equal(output["token_type_ids"][row], expected_types)
    assert torch.equal(output["attention_mask"][row], (positions <= last).long())
    return ids[1:first], ids[first + 1 : last]


def test_next_sentence_pairs():
    width = 32
    chunks, lengths = unique_chunks(4000, width, seed=0)
    output = make_pairs(chunks, lengths, "nsp", CLS, SEP, PAD, torch.Generator().manual_seed(1))
    assert output["input_ids"].shape == (4000, width + 3) and output["pair_labels"].dtype == torch.int64
    labels = output["pair_labels"].tolist()
    assert within_binomial(sum(labels), len(labels), 0.5)
    offset_starts = 0
    for row, label in enumerate(labels):
        first, second = split_pair(output, row)
        chunk = chunks[row, : lengths[row]].tolist()
        assert 1 <= len(first) < len(chunk) and first == chunk[: len(first)]
        if label == 0:
            assert first + second == chunk
            continue
        source = (second[0] - BASE) // width
        start = (second[0] - BASE) % width
        assert source != row, "a random segment came from its own row"
        expected_length = min(len(chunk) - len(first), int(lengths[source]))
        assert second == chunks[source, start : start + expected_length].tolist()
        assert start + expected_length <= lengths[source]
        offset_starts += start > 0
    assert offset_starts > 0.3 * sum(labels), "random segments always start at the other row's beginning"


def test_cut_is_uniform():
    chunks, lengths = unique_chunks(4000, 8, seed=2, fixed_length=5)
    output = make_pairs(chunks, lengths, "sop", CLS, SEP, PAD, torch.Generator().manual_seed(3))
    first_sep = (output["input_ids"] == SEP).long().argmax(dim=1)
    cuts = first_sep - 1
    for cut in range(1, 5):
        assert within_binomial(int((cuts == cut).sum()), 4000, 1 / 4)


def test_sentence_order_pairs():
    chunks, lengths = unique_chunks(4000, 32, seed=4)
    output = make_pairs(chunks, lengths, "sop", CLS, SEP, PAD, torch.Generator().manual_seed(5))
    labels = output["pair_labels"].tolist()
    assert within_binomial(sum(labels), len(labels), 0.5)
    for row, label in enumerate(labels):
        first, second = split_pair(output, row)
        chunk = chunks[row, : lengths[row]].tolist()
        assert first and second
        assert (second + first if label == 1 else first + second) == chunk


def test_pairs_are_reproducible_and_maskable():
    chunks, lengths = unique_chunks(32, 128, seed=6)
    first = make_pairs(chunks, lengths, "nsp", CLS, SEP, PAD, torch.Generator().manual_seed(7))
    second = make_pairs(chunks, lengths, "nsp", CLS, SEP, PAD, torch.Generator().manual_seed(7))
    assert all(torch.equal(first[name], second[name]) for name in first)
    special_ids = {"pad": PAD, "cls": CLS, "sep": SEP, "mask": 4}
    _, labels = mask_tokens(
        first["input_ids"], special_ids, BASE + 32 * 128, MaskingConfig(), torch.Generator()
    )
    assert not (labels[first["attention_mask"] == 0] != IGNORE_INDEX).any()
    assert not (labels[torch.isin(first["input_ids"], torch.tensor([CLS, SEP]))] != IGNORE_INDEX).any()


def test_pair_errors():
    chunks, lengths = unique_chunks(3, 8, seed=8)
    generator = torch.Generator()
    with pytest.raises(ValueError, match="need >= 2 rows, got 1"):
        make_pairs(chunks[:1], lengths[:1], "nsp", CLS, SEP, PAD, generator)
    make_pairs(chunks[:1], lengths[:1], "sop", CLS, SEP, PAD, generator)  # SOP needs only its own row
    with pytest.raises(ValueError, match=r"in \[2, 8\]"):
        make_pairs(chunks, torch.tensor([2, 1, 5]), "sop", CLS, SEP, PAD, generator)
    with pytest.raises(ValueError, match=r"in \[2, 8\]"):
        make_pairs(chunks, torch.tensor([2, 9, 5]), "sop", CLS, SEP, PAD, generator)
    with pytest.raises(ValueError, match="unknown sentence-pair kind 'mlm'"):
        make_pairs(chunks, lengths, "mlm", CLS, SEP, PAD, generator)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths must have shape"):
        make_pairs(chunks, lengths[:2], "sop", CLS, SEP, PAD, generator)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        make_pairs(chunks[0], lengths, "sop", CLS, SEP, PAD, generator)
