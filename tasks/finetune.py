"""SST-2 fine-tuning of a pretrained checkpoint, or of the same architecture from a random init.

Both inits get the same budget: the same seeded training subset, the same per-epoch order, epochs,
optimizer steps, learning-rate schedule and classifier-head initialisation seed.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressReporter, ProgressTarget
from lmforge.tasks.config import Sst2FinetuneConfig
from lmforge.tasks.data import LabelledText, load_sst2, seeded_subset
from lmforge.tasks.modeling import load_tokenizer, max_positions, write_json, write_metrics

log = get_logger(__name__)
Init = Literal["pretrained", "random"]


def build_classifier(model_dir: Path, init: Init, pad_token_id: int, seed: int) -> Any:
    """A 2-label sequence classifier of the checkpoint's architecture, pretrained or freshly initialised."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    # GPT-2's head pools the last non-pad token, so the config must know the pad id.
    config = AutoConfig.from_pretrained(model_dir, num_labels=2, pad_token_id=pad_token_id)
    torch.manual_seed(seed)  # seeds the new head (and, for "random", every weight)
    if init == "pretrained":
        return AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)
    if init == "random":
        return AutoModelForSequenceClassification.from_config(config)
    raise ConfigError(f"init must be 'pretrained' or 'random', got {init!r}")


def encode(tokenizer: Any, rows: list[LabelledText], max_length: int) -> list[list[int]]:
    """Token ids per row; encoders get `[CLS] ... [SEP]` explicitly (their head reads [CLS])."""
    bodies = tokenizer([row.text for row in rows], add_special_tokens=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        return [ids[:max_length] for ids in bodies]
    return [[cls_id, *ids[: max_length - 2], sep_id] for ids in bodies]


def collate(sequences: list[list[int]], labels: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch (dynamic padding)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
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
    sequences: list[list[int]],
    labels: list[int],
    pad_id: int,
    config: Sst2FinetuneConfig,
    seed: int,
    progress: ProgressTarget | None = None,
) -> list[list[float]]:
    """The optimisation loop; returns the loss curve as [step, loss] pairs. Reports steps to `progress`."""
    steps_per_epoch = math.ceil(len(sequences) / config.batch_size)
    reporter = ProgressReporter(progress, config.epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, config, config.epochs * steps_per_epoch)
    # Own RNG for the data order, so it does not depend on how much torch RNG the init consumed.
    order_rng = random.Random(seed)
    curve, step = [], 0
    model.train()
    for epoch in range(config.epochs):
        order = list(range(len(sequences)))
        order_rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chosen = order[start : start + config.batch_size]
            batch = collate([sequences[i] for i in chosen], [labels[i] for i in chosen], pad_id)
            loss = model(**batch).loss
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
    model = build_classifier(model_dir, init, tokenizer.pad_token_id, seed)
    max_length = min(config.max_length, max_positions(model.config))
    train_ids, dev_ids = encode(tokenizer, train_rows, max_length), encode(tokenizer, dev_rows, max_length)
    curve = train(
        model, train_ids, [r.label for r in train_rows], tokenizer.pad_token_id, config, seed, progress
    )
    dev_labels = [r.label for r in dev_rows]
    metrics: dict[str, Any] = {
        "init": init,
        **evaluate(model, dev_ids, dev_labels, tokenizer.pad_token_id, config.batch_size),
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
