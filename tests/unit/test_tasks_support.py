"""Tiny HF-format models, tokenizers and data files for the task tests (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POSITIVE = [
    "a charming and often affecting journey",
    "the best film of the year , full of warmth and wit",
    "a funny , moving and beautifully acted story",
    "an engaging , clever and delightful comedy",
    "one of the most inventive films in years",
    "the cast is superb and the script is smart",
    "a gorgeous , heartfelt and hopeful picture",
    "it is a joy to watch from start to finish",
]
NEGATIVE = [
    "unflinchingly bleak and desperate",
    "contains no wit , only labored gags",
    "a dull , tedious and lifeless mess",
    "the plot is thin and the acting is wooden",
    "boring from the first scene to the last",
    "a sloppy , witless and forgettable film",
    "the jokes fall flat and the story drags",
    "an ugly , pointless and tiresome exercise",
]
EXTRA = (
    "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean.\n"
    "It is closely related to the American lobster and may grow to a length of 60 cm.\n"
    "Review: positive negative Sentiment: the film was reviewed by critics.\n"
)


def corpus_text() -> str:
    lines = [f"Review: {s}\nSentiment: positive" for s in POSITIVE]
    lines += [f"Review: {s}\nSentiment: negative" for s in NEGATIVE]
    return ("\n\n".join(lines) + "\n" + EXTRA) * 4


def write_sst2(data_dir: Path, num_train: int = 40) -> None:
    """GLUE-format train.tsv / dev.tsv under data_dir/sst2 (trailing space before the tab, as in GLUE)."""
    rows = [(s, 1) for s in POSITIVE] + [(s, 0) for s in NEGATIVE]
    (data_dir / "sst2").mkdir(parents=True, exist_ok=True)
    train = [rows[i % len(rows)] for i in range(num_train)]
    for name, part in (("train.tsv", train), ("dev.tsv", rows[::2] + rows[1::4])):
        body = "".join(f"{text} \t{label}\n" for text, label in part)
        (data_dir / "sst2" / name).write_text("sentence\tlabel\n" + body)


def write_wikitext(data_dir: Path, repeat: int = 3) -> str:
    """A small CRLF text file at data_dir/wikitext2_raw/valid.txt; returns its text with LF newlines."""
    text = (" \n = Homarus gammarus = \n \n" + EXTRA) * repeat
    (data_dir / "wikitext2_raw").mkdir(parents=True, exist_ok=True)
    (data_dir / "wikitext2_raw" / "valid.txt").write_bytes(text.replace("\n", "\r\n").encode())
    return text


def build_bpe_tokenizer(model_dir: Path, with_pad: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<pad>"] if with_pad else ["<|endoftext|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus_text()], trainer)
    extra = {"pad_token": "<pad>"} if with_pad else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", **extra
    )
    fast.save_pretrained(model_dir)
    return fast


def build_wordpiece_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([corpus_text()], trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(model_dir)
    return fast


def build_tiny_gpt2(
    model_dir: Path, n_positions: int = 64, seed: int = 0, with_pad: bool = True, vocab_multiple_of: int = 1
) -> Path:
    """A 2-layer GPT-2 with its BPE tokenizer; `vocab_multiple_of` pads its table as pre-training can."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_bpe_tokenizer(model_dir, with_pad=with_pad)
    config = GPT2Config(
        vocab_size=-(-len(tokenizer) // vocab_multiple_of) * vocab_multiple_of,
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    return model_dir


def build_tiny_bert(model_dir: Path, max_positions: int = 64, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = build_wordpiece_tokenizer(model_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(model_dir)
    (model_dir / "lmforge_tokenizer.json").write_text(
        json.dumps(
            {
                "algorithm": "wordpiece",
                "special_ids": {"pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id},
            }
        )
    )
    return model_dir


def write_validation_shards(
    shards_dir: Path, model_dir: Path, seq_len: int = 16, per_shard: int = 5
) -> np.ndarray:
    """MLM-packed `[CLS] ... [SEP]` validation shards (two files) plus a manifest; returns the ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    body = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    width = seq_len - 2
    rows = [
        [tokenizer.cls_token_id, *body[i : i + width], tokenizer.sep_token_id]
        for i in range(0, 2 * per_shard * width, width)
    ]
    shards_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(2):
        path = f"validation-{index:05d}.parquet"
        part = rows[index * per_shard : (index + 1) * per_shard]
        table = pa.table({"input_ids": pa.array(part, type=pa.list_(pa.int32()))})
        pq.write_table(table, shards_dir / path)
        entries.append({"path": path, "split": "validation", "num_sequences": len(part)})
    (shards_dir / "dataset_manifest.json").write_text(json.dumps({"shards": entries, "seq_len": seq_len}))
    return np.array(rows, dtype=np.int64)
