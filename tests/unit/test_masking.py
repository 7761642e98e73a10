"""MLM masking against its definition: 15% of non-special tokens, then 80/10/10, fresh per epoch."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.training.config import MaskingConfig
from lmforge.training.masking import IGNORE_INDEX, mask_tokens, masking_generator

pytestmark = pytest.mark.unit

VOCAB_SIZE = 1000
SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "eos": 5}
SIGMAS = 5


def within_binomial(successes: int, trials: int, p: float) -> bool:
    p_hat = successes / trials
    return abs(p_hat - p) <= SIGMAS * math.sqrt(p * (1 - p) / trials)


def sample_ids(rows: int = 200, seq_len: int = 600) -> torch.Tensor:
    """Random non-special ids in [CLS] ... [SEP] rows, with pad/eos sprinkled in (120k tokens)."""
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(len(SPECIAL_IDS), VOCAB_SIZE, (rows, seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]
    sprinkle = torch.rand(ids.shape, generator=generator) < 0.05
    ids[sprinkle] = torch.tensor([SPECIAL_IDS["pad"], SPECIAL_IDS["eos"]])[
        torch.randint(2, (int(sprinkle.sum()),), generator=generator)
    ]
    return ids


@pytest.fixture(scope="module")
def masked_sample():
    ids = sample_ids()
    masked, labels = mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), masking_generator(0, 0, 0, 0))
    return ids, masked, labels


def test_selection_rate_and_80_10_10_split(masked_sample):
    ids, masked, labels = masked_sample
    special = torch.isin(ids, torch.tensor(list(SPECIAL_IDS.values())))
    selected = labels != IGNORE_INDEX
    num_candidates = int((~special).sum())
    assert ids.numel() >= 100_000
    assert within_binomial(int(selected.sum()), num_candidates, 0.15)

    num_selected = int(selected.sum())
    to_mask = selected & (masked == SPECIAL_IDS["mask"])
    unchanged = selected & (masked == ids)
    # A random replacement can draw the original token: 1 in |non-special vocabulary|.
    collision = 1 / (VOCAB_SIZE - len(SPECIAL_IDS))
    assert within_binomial(int(to_mask.sum()), num_selected, 0.8)
    assert within_binomial(int(unchanged.sum()), num_selected, 0.1 + 0.1 * collision)
    replaced = selected & ~to_mask & ~unchanged
    assert within_binomial(int(replaced.sum()), num_selected, 0.1 * (1 - collision))
    # Random replacements come from the non-special vocabulary and spread over it.
    assert not torch.isin(masked[replaced], torch.tensor(list(SPECIAL_IDS.values()))).any()
    assert len(torch.unique(masked[replaced])) > 0.7 * (VOCAB_SIZE - len(SPECIAL_IDS))


def test_labels_and_special_tokens(masked_sample):
    ids, masked, labels = masked_sample
    special = torch.isin(ids, torch.tensor(list(SPECIAL_IDS.values())))
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any(), "a special token was selected"
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert (labels[~selected] == IGNORE_INDEX).all()
    assert torch.equal(masked[~selected], ids[~selected]), "an unselected token changed"


def test_masks_fresh_per_epoch_and_reproducible():
    ids = sample_ids(rows=8, seq_len=128)
    config = MaskingConfig()

    def labels_for(seed: int, epoch: int, rank: int = 0, step: int = 3) -> torch.Tensor:
        return mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, config, masking_generator(seed, epoch, rank, step))[
            1
        ]

    assert torch.equal(labels_for(7, 0), labels_for(7, 0))
    assert not torch.equal(labels_for(7, 0), labels_for(7, 1))
    assert not torch.equal(labels_for(7, 0), labels_for(8, 0))
    assert not torch.equal(labels_for(7, 0, rank=1), labels_for(7, 0, rank=0))


def test_custom_split_and_missing_mask_id():
    ids = sample_ids(rows=50, seq_len=400)
    config = MaskingConfig(mask_probability=0.3, replace_with_mask=1.0, replace_with_random=0.0)
    masked, labels = mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, config, masking_generator(1, 0, 0, 0))
    selected = labels != IGNORE_INDEX
    assert (masked[selected] == SPECIAL_IDS["mask"]).all()
    num_candidates = int((~torch.isin(ids, torch.tensor(list(SPECIAL_IDS.values())))).sum())
    assert within_binomial(int(selected.sum()), num_candidates, 0.3)
    with pytest.raises(ValueError, match="mask"):
        mask_tokens(ids, {"pad": 0}, VOCAB_SIZE, config, masking_generator(1, 0, 0, 0))
