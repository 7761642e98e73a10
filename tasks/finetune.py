"""What every fine-tune task shares: pretrained-or-random instantiation, dynamic padding, the
optimizer and schedule, and the training loop with a dev evaluation after each epoch.

Both inits get the same budget: the same seeded training subset, the same per-epoch order, epochs,
optimizer steps, learning-rate schedule and new-weight initialisation seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmforge.core.errors import ConfigError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressReporter, ProgressTarget

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
        # Auto classes build from a config with from_config; a concrete class is its constructor.
        build = getattr(auto_class, "from_config", None) or auto_class
        return build(config)
    raise ConfigError(f"init must be 'pretrained' or 'random', got {init!r}")


def new_parameter_names(auto_class: Any, model_dir: Path, config: Any) -> set[str]:
    """Names of the parameters `auto_class` adds to the checkpoint (its task head): what a linear
    probe trains, for either init, since both share the architecture."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists exactly these names, as a warning
    try:
        _, info = auto_class.from_pretrained(model_dir, config=config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    names = set(info["missing_keys"])
    if not names:
        raise ConfigError(
            f"{auto_class.__name__} adds no weights to {model_dir}: nothing for a probe to train"
        )
    return names


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask of the real tokens), right-padded to the longest sequence (dynamic padding)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


@dataclass(frozen=True)
class Schedule:
    """How one fit trains: epochs, batch, AdamW and its linear warmup-then-decay schedule."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    log_every: int = 1


def make_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], schedule: Schedule, num_steps: int
) -> tuple[Any, Any]:
    """AdamW without decay on biases and norms, and linear warmup then linear decay to zero."""
    named = [(name, p) for name, p in named_parameters if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.learning_rate,
    )
    warmup = math.ceil(schedule.warmup_fraction * num_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (num_steps - step) / max(1, num_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def freeze_all_but(model: Any, trainable: set[str]) -> int:
    """Freeze every parameter not named in `trainable`; returns the trainable parameter count."""
    count = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
        count += parameter.numel() if name in trainable else 0
    if count == 0:
        raise ConfigError(f"none of {sorted(trainable)} is a parameter of {type(model).__name__}")
    return count


@dataclass
class TrainResult:
    """A fit's loss curve ([step, loss]), its dev metrics after each epoch, and wall seconds at the
    end of each epoch (telemetry, not content)."""

    curve: list[list[float]]
    epoch_metrics: list[dict[str, Any]]
    epoch_seconds: list[float]


def train(
    model: Any,
    batch_loss: Callable[[list[int]], torch.Tensor],
    num_examples: int,
    schedule: Schedule,
    seed: int,
    evaluate: Callable[[], dict[str, Any]],
    progress: ProgressTarget | None = None,
    label: str = "fine-tune",
    evaluate_each_epoch: bool = True,
) -> TrainResult:
    """The optimisation loop over `batch_loss(example indices)` (a scalar loss to minimise);
    `evaluate()` scores the dev set after each epoch, or only after the last one. Reports steps
    to `progress`."""
    steps_per_epoch = math.ceil(num_examples / schedule.batch_size)
    total = schedule.epochs * steps_per_epoch
    reporter = ProgressReporter(progress, total)
    optimizer, scheduler = make_optimizer(model.named_parameters(), schedule, total)
    # Own RNG for the data order, so it does not depend on how much torch RNG the init consumed.
    order_rng = random.Random(seed)
    result = TrainResult([], [], [])
    began, step = time.perf_counter(), 0
    for epoch in range(schedule.epochs):
        model.train()
        order = list(range(num_examples))
        order_rng.shuffle(order)
        for start in range(0, len(order), schedule.batch_size):
            loss = batch_loss(order[start : start + schedule.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % schedule.log_every == 0 or step == total:
                result.curve.append([step, loss.item()])
                reporter.update(step, epoch=epoch + 1, loss=result.curve[-1][1])
        result.epoch_seconds.append(time.perf_counter() - began)
        if not evaluate_each_epoch and epoch + 1 < schedule.epochs:
            continue
        model.eval()
        result.epoch_metrics.append({"epoch": epoch + 1, "step": step, **evaluate()})
        log.info(
            "%s epoch %d/%d: last loss %.4f, dev %s",
            label,
            epoch + 1,
            schedule.epochs,
            result.curve[-1][1],
            {k: round(v, 4) for k, v in result.epoch_metrics[-1].items() if isinstance(v, float)},
        )
    return result


def seeded_order(size: int, seed: int) -> list[int]:
    """A seeded permutation of range(size); its prefixes are nested subsets (100 inside 500)."""
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return order


def with_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids if ids and ids[-1] == eos_id else [*ids, eos_id]


def epochs_to_target(epoch_metrics: list[dict[str, Any]], metric: str, value: float) -> int | None:
    """The first epoch whose dev `metric` reached `value` (higher is better), or None."""
    for row in epoch_metrics:
        score = row.get(f"dev_{metric}")
        if isinstance(score, int | float) and score >= value:
            return int(row["epoch"])
    return None


# ---------------------------------------------------------------------------------------------
# One grid cell, for every fine-tune task: the schedule, the fit, the metrics every cell reports
# (the report and the model card read them), and the files it writes.


def cell_schedule(config: Any, cell: Any) -> Schedule:
    """The config's schedule; a linear probe takes `probe_learning_rate`."""
    probe = cell.strategy == "linear_probe"
    return Schedule(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.probe_learning_rate if probe else config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_fraction=config.warmup_fraction,
        log_every=config.log_every,
    )


def fit_cell(
    config: Any,
    cell: Any,
    init: str,
    seed: int,
    model: Any,
    batch_loss: Callable[[list[int]], torch.Tensor],
    num_examples: int,
    evaluate: Callable[[], dict[str, Any]],
    progress: ProgressTarget | None,
) -> TrainResult:
    return train(
        model,
        batch_loss,
        num_examples,
        cell_schedule(config, cell),
        seed,
        evaluate,
        progress,
        label=f"{config.id} {cell.label} {init}",
        evaluate_each_epoch=config.evaluates_each_epoch,
    )


def cell_metrics(
    config: Any,
    cell: Any,
    init: str,
    seed: int,
    result: TrainResult,
    *,
    family: str,
    input_format: str,
    train_size: int,
    dev_size: int,
    dev_source: str,
    skipped: dict[str, list[str]],
    model: Any,
    trainable_parameters: int,
) -> dict[str, Any]:
    """The keys every fine-tune cell reports; tasks add their own."""
    target = config.target
    reached = epochs_to_target(result.epoch_metrics, target.metric, target.value) if target else None
    return {
        "task": config.id,
        "task_type": config.type,
        "strategy": cell.strategy,
        "init": init,
        "model_family": family,
        "input_format": input_format,
        "requested_train_size": cell.train_size or "all",
        "train_size": train_size,
        "seed_index": cell.seed_index,
        "seed": seed,
        "primary_metric": config.metrics[0],
        **{name: value for name, value in result.epoch_metrics[-1].items() if name.startswith("dev_")},
        "dev_size": dev_size,
        "dev_source": dev_source,
        "skipped_rows": {split: len(notes) for split, notes in skipped.items()},
        "skipped_examples": {split: notes[:5] for split, notes in skipped.items() if notes},
        "epochs": config.epochs,
        "num_steps": int(result.curve[-1][0]),
        "epoch_metrics": result.epoch_metrics,
        "target": target.model_dump() if target else None,
        "epochs_to_target": reached,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable_parameters,
        "initial_train_loss": result.curve[0][1],
        # Mean of the last (up to) 10 logged losses: one batch's loss is noisy.
        "final_train_loss": sum(loss for _, loss in result.curve[-10:]) / len(result.curve[-10:]),
    }


def write_cell(
    output_dir: Path, metrics: dict[str, Any], result: TrainResult, began: float
) -> dict[str, Any]:
    """loss_curve.json, metrics.json (content) and telemetry (epoch and target seconds); returns
    what the stage records: the metrics plus those timings and the curve."""
    from lmforge.tasks.modeling import write_json, write_metrics

    reached = metrics.get("epochs_to_target")
    write_json(output_dir / "loss_curve.json", result.curve)
    timing = {
        "epoch_seconds": result.epoch_seconds,
        "target_reached_seconds": result.epoch_seconds[reached - 1] if reached else None,
    }
    written = write_metrics(output_dir, metrics, time.perf_counter() - began, extra_telemetry=timing)
    return {**written, **timing, "loss_curve": result.curve}
