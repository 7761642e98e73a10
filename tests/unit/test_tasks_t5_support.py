"""A tiny T5 model directory laid out like the span objective's export (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_tasks_support import NEGATIVE, POSITIVE, corpus_text
from tests.unit.test_tokenization_helpers import write_corpus

NUM_SENTINELS = 4


def synthetic_rows(num_rows: int) -> list[tuple[str, int]]:
    """Sentences whose label is whether they say "good" (1) or "bad" (0): trivially learnable."""
    subjects = ["the film", "this movie", "the plot", "the cast", "the story", "it"]
    fillers = ["was", "is", "felt", "looked", "seemed"]
    rows = []
    for index in range(num_rows):
        label = index % 2
        subject, filler = subjects[index % len(subjects)], fillers[(index // 2) % len(fillers)]
        rows.append((f"{subject} {filler} {'good' if label else 'bad'}", label))
    return rows


def tokenizer_corpus() -> list[tuple[str, str]]:
    texts = corpus_text().split("\n\n")
    texts += [f"sst2 sentence: {text}\n{word}" for text, word in ((s, "positive") for s in POSITIVE)]
    texts += [f"sst2 sentence: {text}\n{word}" for text, word in ((s, "negative") for s in NEGATIVE)]
    texts += [f"sst2 sentence: {text}" for text, _ in synthetic_rows(30)]
    return [(f"doc-{index}", text) for index, text in enumerate(texts * 2)]


def build_tiny_t5(model_dir: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Unigram tokenizer with sentinels, a randomly initialised T5 (build_t5) and lmforge_pretrain.json."""
    import torch

    from lmforge.tokenization import TokenizerConfig, load_tokenizer_meta, train_tokenizer
    from lmforge.training.config import ModelConfig
    from lmforge.training.models import build_t5

    corpus_dir = write_corpus(model_dir.parent / f"{model_dir.name}-corpus", tokenizer_corpus())
    config = TokenizerConfig(algorithm="unigram", vocab_size=300, sentinels=NUM_SENTINELS)
    train_tokenizer(config, corpus_dir, model_dir)
    meta = load_tokenizer_meta(model_dir)
    shape = ModelConfig(size="custom", hidden_size=hidden_size, num_layers=2, num_heads=2)
    torch.manual_seed(seed)
    model = build_t5(shape, meta["vocab_size"], 32, meta["special_ids"])
    model.save_pretrained(model_dir)
    export = {
        "objective": "span",
        "auto_model_class": "AutoModelForSeq2SeqLM",
        "seq_len": 32,
        "seed": seed,
        "steps": 0,
        "special_ids": meta["special_ids"],
    }
    (model_dir / "lmforge_pretrain.json").write_text(json.dumps(export, indent=2, sort_keys=True) + "\n")
    return model_dir


def write_synthetic_sst2(data_dir: Path, num_train: int = 64, num_dev: int = 20) -> None:
    """GLUE-format train.tsv / dev.tsv of `synthetic_rows` (dev rows follow the train rows)."""
    rows = synthetic_rows(num_train + num_dev)
    (data_dir / "sst2").mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", rows[:num_train]), ("dev.tsv", rows[num_train:])):
        body = "".join(f"{text} \t{label}\n" for text, label in part)
        (data_dir / "sst2" / name).write_text("sentence\tlabel\n" + body)
