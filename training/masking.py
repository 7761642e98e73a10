"""BERT-style masked-LM corruption as a plain tensor function, plus its deterministic RNG streams."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from lmforge.training.config import MaskingConfig

IGNORE_INDEX = -100
# Stream id for validation masks: far outside any real epoch number, so eval masks never coincide
# with a training epoch's masks and stay fixed across evaluations.
EVAL_STREAM = 2**40


def masking_generator(seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, rank, step): deterministic, different every epoch."""
    # SeedSequence mixes the tuple properly; seed + epoch arithmetic would make streams collide.
    state = np.random.SeedSequence([seed, epoch, rank, step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt `input_ids` for masked-LM training; returns (masked_input_ids, labels).

    Every id in `special_ids` counts as special and is never selected; `special_ids["mask"]` is the
    [MASK] id. Random replacements come from the non-special vocabulary. Labels hold the original id at
    selected positions and -100 elsewhere. Random draws are made on CPU with `generator`.
    """
    if "mask" not in special_ids:
        raise ValueError(f"mask_tokens needs a 'mask' entry in special_ids, got {dict(special_ids)}")
    ids = input_ids.to(device="cpu", dtype=torch.long)
    special = torch.tensor(sorted(set(special_ids.values())), dtype=torch.long)
    selectable = ~torch.isin(ids, special)
    selected = (torch.rand(ids.shape, generator=generator) < masking_config.mask_probability) & selectable
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
