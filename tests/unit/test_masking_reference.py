"""Our 80/10/10 masking against transformers' DataCollatorForLanguageModeling: rates and MLM loss.

One documented difference: HF draws random replacements from the whole vocabulary, special tokens
included (`torch.randint(len(tokenizer))`); we draw from the non-special ids. The expected
proportions below account for it explicitly.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.training.config import MaskingConfig
from lmforge.training.masking import IGNORE_INDEX, mask_tokens, masking_generator

pytestmark = pytest.mark.unit

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
# A small vocabulary makes HF's draws of special tokens (5 in 100) measurable.
VOCAB_SIZE = 100
SIGMAS = 5


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS)}
    vocab |= {f"w{index}": index for index in range(len(SPECIALS), VOCAB_SIZE)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    assert len(tokenizer) == VOCAB_SIZE and sorted(tokenizer.all_special_ids) == list(range(len(SPECIALS)))
    return tokenizer


def hf_mask(tokenizer, ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=0.15, return_tensors="pt", seed=seed
    )
    batch = collator([row.tolist() for row in ids])
    return batch["input_ids"], batch["labels"]


def sample_ids(rows: int, seq_len: int, seed: int) -> torch.Tensor:
    """[CLS] words [SEP] then a little padding, so both maskers must skip special tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), VOCAB_SIZE, (rows, seq_len), generator=generator)
    ids[:, 0] = SPECIAL_IDS["cls"]
    ends = torch.randint(seq_len // 2, seq_len, (rows,), generator=generator)
    positions = torch.arange(seq_len)
    ids[positions == ends[:, None]] = SPECIAL_IDS["sep"]
    ids[positions > ends[:, None]] = SPECIAL_IDS["pad"]
    return ids


def outcome_counts(ids: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(masked[~selected], ids[~selected])
    is_special = masked < len(SPECIALS)
    return {
        "candidates": int((ids >= len(SPECIALS)).sum()),
        "selected": int(selected.sum()),
        "mask": int((selected & (masked == SPECIAL_IDS["mask"])).sum()),
        "unchanged": int((selected & (masked == ids)).sum()),
        "random_word": int((selected & (masked != ids) & ~is_special).sum()),
        "random_special": int((selected & is_special & (masked != SPECIAL_IDS["mask"])).sum()),
        "selected_special": int((selected & (ids < len(SPECIALS))).sum()),
    }


def expected_proportions(random_pool: int, pool_specials: int) -> dict[str, float]:
    """Of the selected tokens; a random draw is uniform over `random_pool` ids, `pool_specials` special."""
    # The one random draw that can be [MASK] itself counts as "mask" for HF.
    mask_draw = 1 / random_pool if pool_specials else 0.0
    return {
        "mask": 0.8 + 0.1 * mask_draw,
        "unchanged": 0.1 + 0.1 / random_pool,
        "random_word": 0.1 * (random_pool - pool_specials - 1) / random_pool,
        "random_special": 0.1 * (pool_specials - (1 if pool_specials else 0)) / random_pool,
    }


def test_rates_match_the_hf_collator(hf_tokenizer):
    ids = sample_ids(900, 160, seed=0)
    ours = outcome_counts(
        ids, *mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), masking_generator(0, 0, 0, 0))
    )
    theirs = outcome_counts(ids, *hf_mask(hf_tokenizer, ids.clone(), seed=0))
    assert ours["candidates"] >= 100_000 and ours["selected_special"] == theirs["selected_special"] == 0

    def assert_close(name: str, p_ours: float, p_theirs: float, n_ours: int, n_theirs: int) -> None:
        rate_ours, rate_theirs = ours[name] / n_ours, theirs[name] / n_theirs
        sigma = math.sqrt(p_ours * (1 - p_ours) / n_ours + p_theirs * (1 - p_theirs) / n_theirs)
        difference = (rate_ours - rate_theirs) - (p_ours - p_theirs)
        assert abs(difference) <= SIGMAS * sigma, (
            f"{name}: ours {rate_ours:.5f} (expected {p_ours:.5f}), HF {rate_theirs:.5f} "
            f"(expected {p_theirs:.5f}), difference off by {difference:.5f} > {SIGMAS} x {sigma:.5f}"
        )

    assert_close("selected", 0.15, 0.15, ours["candidates"], theirs["candidates"])
    expected_ours = expected_proportions(VOCAB_SIZE - len(SPECIALS), 0)
    expected_theirs = expected_proportions(VOCAB_SIZE, len(SPECIALS))
    for name in expected_ours:
        assert_close(name, expected_ours[name], expected_theirs[name], ours["selected"], theirs["selected"])
    # The one real difference, made visible: HF puts special tokens into the input, we never do.
    assert ours["random_special"] == 0 and theirs["random_special"] > 0


def test_mlm_loss_matches_the_hf_collator(hf_tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(config).eval()
    ids = sample_ids(16, 64, seed=1)
    attention_mask = (ids != SPECIAL_IDS["pad"]).long()

    def loss(masked: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(input_ids=masked, attention_mask=attention_mask, labels=labels).loss)

    seeds = range(24)
    ours = torch.tensor(
        [
            loss(
                *mask_tokens(ids, SPECIAL_IDS, VOCAB_SIZE, MaskingConfig(), masking_generator(seed, 0, 0, 0))
            )
            for seed in seeds
        ]
    )
    theirs = torch.tensor([loss(*hf_mask(hf_tokenizer, ids.clone(), seed=seed)) for seed in seeds])
    sem_ours = float(ours.std() / math.sqrt(len(seeds)))
    sem_theirs = float(theirs.std() / math.sqrt(len(seeds)))
    tolerance = 3 * math.sqrt(sem_ours**2 + sem_theirs**2)
    assert sem_ours > 0 and sem_theirs > 0
    assert abs(float(ours.mean()) - float(theirs.mean())) <= tolerance, (
        f"ours {float(ours.mean()):.4f} +- {sem_ours:.4f}, HF {float(theirs.mean()):.4f} +- {sem_theirs:.4f} "
        f"(tolerance {tolerance:.4f})"
    )
