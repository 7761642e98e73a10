"""BERT-style masked-LM corruption as a plain tensor function, plus its deterministic RNG streams.

Variants: whole-word masking (`continues_word`, Google BERT's `--do_whole_word_mask`) and static
masking (`mask_batch(dynamic=False)`: one fixed mask per sequence, as original BERT's data creation)
beside RoBERTa's dynamic masking (a fresh mask every epoch, the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from lmforge.training.config import MaskingConfig

IGNORE_INDEX = -100
# Stream id for validation masks: far outside any real epoch number, so eval masks never coincide
# with a training epoch's masks and stay fixed across evaluations.
EVAL_STREAM = 2**40
# Stream ids for static (per-sequence) masks, one per split, in the epoch slot of masking_generator:
# distinct from EVAL_STREAM and from any real epoch, so a static mask never equals a dynamic one, and
# train sequence i and validation sequence i (both numbered from 0) get unrelated masks.
STATIC_STREAMS = {"train": 2**41, "validation": 2**41 + 1}


def masking_generator(seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, rank, step): deterministic, different every epoch."""
    # SeedSequence mixes the tuple properly; seed + epoch arithmetic would make streams collide.
    state = np.random.SeedSequence([seed, epoch, rank, step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


def sequence_generator(
    seed: int, sequence_index: int, split: Literal["train", "validation"] = "train"
) -> torch.Generator:
    """A CPU generator for one sequence's static mask: depends on (seed, split, index) only.

    Not on epoch, rank or step, so the sequence gets the same mask wherever it lands; `split` keeps
    validation sequence i apart from train sequence i.
    """
    if split not in STATIC_STREAMS:
        raise ValueError(f"unknown split {split!r} for static masking (known: {', '.join(STATIC_STREAMS)})")
    if sequence_index < 0:
        raise ValueError(f"sequence_index must be >= 0 (clip padding rows first), got {sequence_index}")
    return masking_generator(seed, STATIC_STREAMS[split], 0, int(sequence_index))


def non_special_vocab(vocab_size: int, special_ids: Mapping[str, int]) -> torch.Tensor:
    special = torch.tensor(sorted(set(special_ids.values())), dtype=torch.long)
    vocab = torch.arange(vocab_size, dtype=torch.long)
    return vocab[~torch.isin(vocab, special)]


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: Mapping[str, int],
    vocab_size: int,
    masking_config: MaskingConfig,
    generator: torch.Generator,
    *,
    continues_word: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt `input_ids` for masked-LM training; returns (masked_input_ids, labels).

    Every id in `special_ids` counts as special and is never selected; `special_ids["mask"]` is the
    [MASK] id. Random replacements come from the non-special vocabulary. Labels hold the original id at
    selected positions and -100 elsewhere. Random draws are made on CPU with `generator`.

    continues_word: bool per token id (`word_boundaries.continuation_table`); when given, whole words
        are selected with probability `mask_probability` (a special token ends a word), and the
        mask / random / unchanged choice is still made per token, as in Google's BERT.
    """
    if "mask" not in special_ids:
        raise ValueError(f"mask_tokens needs a 'mask' entry in special_ids, got {dict(special_ids)}")
    ids = input_ids.to(device="cpu", dtype=torch.long)
    special = torch.tensor(sorted(set(special_ids.values())), dtype=torch.long)
    selectable = ~torch.isin(ids, special)
    if continues_word is None:
        selected = (torch.rand(ids.shape, generator=generator) < masking_config.mask_probability) & selectable
    else:
        selected = _select_whole_words(ids, selectable, continues_word, masking_config, generator)
    # One uniform draw per position splits the selected tokens into mask / random / unchanged.
    action = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (action < masking_config.replace_with_mask)
    to_random = (
        selected
        & (action >= masking_config.replace_with_mask)
        & (action < masking_config.replace_with_mask + masking_config.replace_with_random)
    )
    candidates = non_special_vocab(vocab_size, special_ids)
    random_tokens = candidates[torch.randint(len(candidates), ids.shape, generator=generator)]

    masked = ids.clone()
    masked[to_mask] = special_ids["mask"]
    masked[to_random] = random_tokens[to_random]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked.to(input_ids.device), labels.to(input_ids.device)


def word_starts(ids: torch.Tensor, selectable: torch.Tensor, continues_word: torch.Tensor) -> torch.Tensor:
    """Selectable positions that begin a word: not a continuation, or after a special / row start."""
    table = torch.as_tensor(continues_word, dtype=torch.bool).cpu()
    if ids.numel() and int(ids.max()) >= len(table):
        raise ValueError(f"continues_word has {len(table)} entries but the batch holds id {int(ids.max())}")
    previous_selectable = torch.zeros_like(selectable)
    previous_selectable[..., 1:] = selectable[..., :-1]
    return selectable & (~table[ids] | ~previous_selectable)


def _select_whole_words(
    ids: torch.Tensor,
    selectable: torch.Tensor,
    continues_word: torch.Tensor,
    masking_config: MaskingConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    starts = word_starts(ids, selectable, continues_word)
    # Row-major numbering: a continuation takes the number of the last start before it, which is in
    # its own row because every row's first selectable token starts a word.
    word_index = torch.cumsum(starts.reshape(-1).long(), dim=0).reshape(ids.shape) - 1
    num_words = int(starts.sum())
    if num_words == 0:
        return torch.zeros_like(selectable)
    word_selected = torch.rand(num_words, generator=generator) < masking_config.mask_probability
    return selectable & word_selected[word_index.clamp(min=0)]


def mask_batch(
    input_ids: torch.Tensor,
    sequence_indices: np.ndarray | None,
    special_ids: Mapping[str, int],
    vocab_size: int,
    masking_config: MaskingConfig,
    *,
    dynamic: bool,
    generator: torch.Generator,
    seed: int,
    whole_word: bool = False,
    continues_word: torch.Tensor | None = None,
    split: Literal["train", "validation"] = "train",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch dynamically (RoBERTa) or statically (original BERT); returns (masked, labels).

    dynamic: mask with `generator`, the loop's per-micro-batch stream (fresh every epoch).
        Otherwise row r is masked with `sequence_generator(seed, sequence_indices[r], split)`, so a
        sequence gets the same mask every epoch whatever its batch, position or rank: the same as
        storing masks in the shards at data creation. `generator` is then unused.
    sequence_indices: each row's index in its split (>= 0; clip padding rows); needed when static.
    whole_word: select whole words; needs `continues_word` (ignored when whole_word is False).
    split: "validation" for the eval set, whose indices also start at 0 (see sequence_generator).
    """
    if whole_word and continues_word is None:
        raise ValueError("whole-word masking needs continues_word (word_boundaries.continuation_table)")
    table = continues_word if whole_word else None
    if dynamic:
        return mask_tokens(
            input_ids, special_ids, vocab_size, masking_config, generator, continues_word=table
        )
    if sequence_indices is None or len(sequence_indices) != len(input_ids):
        got = None if sequence_indices is None else len(sequence_indices)
        raise ValueError(f"static masking needs one sequence index per row ({len(input_ids)}), got {got}")
    rows = [
        mask_tokens(
            row[None],
            special_ids,
            vocab_size,
            masking_config,
            sequence_generator(seed, int(index), split),
            continues_word=table,
        )
        for row, index in zip(input_ids, sequence_indices, strict=True)
    ]
    return torch.cat([masked for masked, _ in rows]), torch.cat([labels for _, labels in rows])
