"""SST-2 fine-tuning of a pretrained checkpoint, or of the same architecture from a random init.

Both inits get the same budget: the same seeded training subset, the same per-epoch order, epochs,
optimizer steps, learning-rate schedule and classifier-head initialisation seed.

Decoder-only and encoder models get a 2-label classification head. An encoder-decoder (T5, from
the span objective) is fine-tuned text to text as T5 was: the input is prefix + sentence, the
target the label word, and the dev accuracy is the exact match of its greedy generation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressReporter, ProgressTarget
from lmforge.tasks.config import Sst2FinetuneConfig
from lmforge.tasks.data import LabelledText, load_sst2, seeded_subset
from lmforge.tasks.modeling import is_seq2seq, load_tokenizer, max_positions, write_json, write_metrics

log = get_logger(__name__)
Init = Literal["pretrained", "random"]
Batch = dict[str, torch.Tensor]
IGNORE_INDEX = -100  # label positions the loss skips (the transformers convention)


def instantiate(auto_class: Any, model_dir: Path, config: Any, init: Init, seed: int) -> Any:
    """`auto_class` with the checkpoint's weights, or the same config freshly initialised; seeded."""
    torch.manual_seed(seed)  # seeds any new head (and, for "random", every weight)
    if init == "pretrained":
        return auto_class.from_pretrained(model_dir, config=config)
    if init == "random":
        return auto_class.from_config(config)
    raise ConfigError(f"init must be 'pretrained' or 'random', got {init!r}")


def build_classifier(model_dir: Path, init: Init, pad_token_id: int, seed: int) -> Any:
    """A 2-label sequence classifier of the checkpoint's architecture, pretrained or freshly initialised."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    # GPT-2's head pools the last non-pad token, so the config must know the pad id.
    config = AutoConfig.from_pretrained(model_dir, num_labels=2, pad_token_id=pad_token_id)
    return instantiate(AutoModelForSequenceClassification, model_dir, config, init, seed)


def build_seq2seq(model_dir: Path, init: Init, seed: int) -> Any:
    """The checkpoint's encoder-decoder with its LM head, pretrained or freshly initialised (the
    architecture's own init, as the span pretraining started from)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(model_dir)
    return instantiate(AutoModelForSeq2SeqLM, model_dir, config, init, seed)


def encode(tokenizer: Any, rows: list[LabelledText], max_length: int) -> list[list[int]]:
    """Token ids per row; encoders get `[CLS] ... [SEP]` explicitly (their head reads [CLS])."""
    bodies = tokenizer([row.text for row in rows], add_special_tokens=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        return [ids[:max_length] for ids in bodies]
    return [[cls_id, *ids[: max_length - 2], sep_id] for ids in bodies]


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask of the real tokens), right-padded to the longest sequence (dynamic padding)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def collate(sequences: list[list[int]], labels: list[int], pad_id: int) -> Batch:
    """Right-padded classifier inputs and their class labels."""
    input_ids, attention_mask = pad_right(sequences, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor(labels)}


def make_optimizer(model: Any, config: Sst2FinetuneConfig, num_steps: int) -> tuple[Any, Any]:
    """AdamW without decay on biases and norms, and linear warmup then linear decay to zero."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    warmup = math.ceil(config.warmup_fraction * num_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (num_steps - step) / max(1, num_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.inference_mode()
def evaluate(model: Any, sequences: list[list[int]], labels: list[int], pad_id: int, batch_size: int) -> dict:
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(sequences), batch_size):
        batch = collate(sequences[start : start + batch_size], labels[start : start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return {"dev_accuracy": correct / len(sequences), "dev_loss": loss_sum / len(sequences)}


def train(
    model: Any,
    make_batch: Callable[[list[int]], Batch],
    num_examples: int,
    config: Sst2FinetuneConfig,
    seed: int,
    progress: ProgressTarget | None = None,
) -> list[list[float]]:
    """The optimisation loop over `make_batch(example indices)`, which returns model inputs with
    labels; returns the loss curve as [step, loss] pairs. Reports steps to `progress`."""
    steps_per_epoch = math.ceil(num_examples / config.batch_size)
    reporter = ProgressReporter(progress, config.epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, config, config.epochs * steps_per_epoch)
    # Own RNG for the data order, so it does not depend on how much torch RNG the init consumed.
    order_rng = random.Random(seed)
    curve, step = [], 0
    model.train()
    for epoch in range(config.epochs):
        order = list(range(num_examples))
        order_rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            loss = model(**make_batch(order[start : start + config.batch_size])).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % config.log_every == 0 or step == config.epochs * steps_per_epoch:
                curve.append([step, loss.item()])
                reporter.update(step, epoch=epoch + 1, loss=curve[-1][1])
        log.info("sst2 fine-tune epoch %d/%d: last loss %.4f", epoch + 1, config.epochs, curve[-1][1])
    return curve


# What a fit returns: the fine-tuned model, its loss curve, and its dev metrics.
Fit = tuple[Any, list[list[float]], dict[str, Any]]


def fit_classifier(
    config: Sst2FinetuneConfig,
    model_dir: Path,
    init: Init,
    tokenizer: Any,
    train_rows: list[LabelledText],
    dev_rows: list[LabelledText],
    seed: int,
    progress: ProgressTarget | None,
) -> Fit:
    """Fine-tune a sequence classification head (and the body) and score the dev set."""
    pad_id = tokenizer.pad_token_id
    model = build_classifier(model_dir, init, pad_id, seed)
    max_length = min(config.max_length, max_positions(model.config))
    train_ids, dev_ids = encode(tokenizer, train_rows, max_length), encode(tokenizer, dev_rows, max_length)
    labels = [row.label for row in train_rows]

    def make_batch(chosen: list[int]) -> Batch:
        return collate([train_ids[i] for i in chosen], [labels[i] for i in chosen], pad_id)

    curve = train(model, make_batch, len(train_ids), config, seed, progress)
    dev_labels = [row.label for row in dev_rows]
    return model, curve, evaluate(model, dev_ids, dev_labels, pad_id, config.batch_size)


def run_sst2_finetune(
    config: Sst2FinetuneConfig,
    model_dir: Path,
    init: Init,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
    progress: ProgressTarget | None = None,
) -> dict[str, Any]:
    """Fine-tune on a seeded SST-2 subset, score the dev set, save the classifier to output_dir/model.

    `progress`: where optimizer steps done are reported (the run's progress board)."""
    began = time.perf_counter()
    key = f"finetune.tasks[{config.name}]"
    train_rows = seeded_subset(
        load_sst2(config.train_path, data_dir, f"{key}.train_path", "train"), config.train_size, seed
    )
    dev_rows = load_sst2(config.dev_path, data_dir, f"{key}.dev_path", "validation")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ArtifactError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # the usual GPT-2 choice; padding is masked anyway
    fit = fit_text_to_text if is_seq2seq(model_dir) else fit_classifier
    model, curve, dev_metrics = fit(config, model_dir, init, tokenizer, train_rows, dev_rows, seed, progress)
    dev_labels = [r.label for r in dev_rows]
    metrics: dict[str, Any] = {
        "init": init,
        **dev_metrics,
        "dev_majority_baseline_accuracy": max(dev_labels.count(0), dev_labels.count(1)) / len(dev_labels),
        "train_size": len(train_rows),
        "dev_size": len(dev_rows),
        "epochs": config.epochs,
        "num_steps": curve[-1][0],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "initial_train_loss": curve[0][1],
        # Mean of the last (up to) 10 logged losses: one batch's loss is noisy.
        "final_train_loss": sum(loss for _, loss in curve[-10:]) / len(curve[-10:]),
    }
    model.save_pretrained(output_dir / "model")
    tokenizer.save_pretrained(output_dir / "model")
    write_json(output_dir / "loss_curve.json", curve)
    return {**write_metrics(output_dir, metrics, time.perf_counter() - began), "loss_curve": curve}


def with_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids if ids and ids[-1] == eos_id else [*ids, eos_id]


def encode_text_to_text(
    tokenizer: Any, rows: list[LabelledText], config: Sst2FinetuneConfig
) -> tuple[list[list[int]], list[list[int]]]:
    """(encoder ids of prefix + sentence, per label the decoder target ids of its word), each
    ending in </s> (T5's tokenizer appends it; inputs are cut to max_length, </s> kept)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ArtifactError("text-to-text fine-tuning needs a tokenizer with an eos token")
    texts = [config.text_to_text_prefix + row.text for row in rows]
    inputs = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]
    targets = [with_eos(ids, eos_id) for ids in tokenizer(config.label_words)["input_ids"]]
    return [with_eos(ids, eos_id) for ids in inputs], targets


def collate_text_to_text(inputs: list[list[int]], targets: list[list[int]], pad_id: int) -> Batch:
    """Right-padded encoder inputs and target labels (padding IGNORE_INDEX); the model shifts the
    labels right behind its decoder start token for teacher forcing."""
    input_ids, attention_mask = pad_right(inputs, pad_id)
    labels, label_mask = pad_right(targets, pad_id)
    labels[label_mask == 0] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.inference_mode()
def evaluate_text_to_text(
    model: Any,
    tokenizer: Any,
    inputs: list[list[int]],
    labels: list[int],
    config: Sst2FinetuneConfig,
    label_targets: list[list[int]],
) -> dict[str, Any]:
    """Accuracy: the greedy generation (special tokens skipped, stripped) equals the gold label
    word; `invalid_fraction`: it is neither label word. `dev_loss` is the teacher-forced
    cross-entropy per gold target token, </s> included (the quantity training minimises).

    Generation stops at </s> or after the longest label target, so no label word is cut short.
    """
    model.eval()
    words, size = config.label_words, len(inputs)
    generations, loss_sum, num_tokens = [], 0.0, 0
    for start in range(0, size, config.batch_size):
        chunk = range(start, min(start + config.batch_size, size))
        batch = collate_text_to_text(
            [inputs[i] for i in chunk], [label_targets[labels[i]] for i in chunk], tokenizer.pad_token_id
        )
        logits = model(**batch).logits.float()
        loss_sum += float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        )
        num_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max(len(ids) for ids in label_targets),
            do_sample=False,
            num_beams=1,
        )
        generations += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return {
        "dev_accuracy": sum(text == words[label] for text, label in zip(generations, labels, strict=True))
        / size,
        "dev_loss": loss_sum / num_tokens,
        # Neither label word: the model has not (yet) learnt the output format.
        "invalid_fraction": sum(text not in words for text in generations) / size,
        "dev_predicted_positive_fraction": generations.count(words[1]) / size,
    }


def fit_text_to_text(
    config: Sst2FinetuneConfig,
    model_dir: Path,
    init: Init,
    tokenizer: Any,
    train_rows: list[LabelledText],
    dev_rows: list[LabelledText],
    seed: int,
    progress: ProgressTarget | None,
) -> Fit:
    """Fine-tune an encoder-decoder on prefix + sentence -> label word (seq2seq cross-entropy over
    the target tokens, teacher forced) and score the dev set by exact match of its generation."""
    model = build_seq2seq(model_dir, init, seed)
    train_inputs, label_targets = encode_text_to_text(tokenizer, train_rows, config)
    dev_inputs, _ = encode_text_to_text(tokenizer, dev_rows, config)
    pad_id = tokenizer.pad_token_id

    def make_batch(chosen: list[int]) -> Batch:
        targets = [label_targets[train_rows[i].label] for i in chosen]
        return collate_text_to_text([train_inputs[i] for i in chosen], targets, pad_id)

    curve = train(model, make_batch, len(train_inputs), config, seed, progress)
    dev_labels = [row.label for row in dev_rows]
    return (
        model,
        curve,
        evaluate_text_to_text(model, tokenizer, dev_inputs, dev_labels, config, label_targets),
    )
