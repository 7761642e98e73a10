"""Matched compute: measure one optimizer step's FLOPs and derive `max_steps` from a FLOP budget.

The FLOPs are measured, not taken from a formula: `torch.utils.flop_counter.FlopCounterMode` counts
one forward and backward of a real micro-batch from the shards (built by the objective exactly as
training builds it), with eager attention because the counter has no formula for the CPU SDPA
kernel. A step is that times `gradient_accumulation_steps` times `num_workers`. The optimizer's
element-wise update is not counted (it is O(parameters), not O(parameters x tokens)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.core.errors import ConfigError
from lmforge.core.logs import get_logger
from lmforge.training.config import PretrainConfig
from lmforge.training.data import load_split
from lmforge.training.masking import masking_generator
from lmforge.training.objectives import BatchContext, get_objective, word_continuation_table

log = get_logger(__name__)


@dataclass(frozen=True)
class StepBudget:
    """What a FLOP budget buys one pre-training configuration."""

    flops_per_step: int
    # Tokens that carry a loss per step in the measured micro-batch, scaled to the step.
    loss_tokens_per_step: int
    max_steps: int
    warmup_steps: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def measure_step_flops(
    config: PretrainConfig, shards_dir: Path, tokenizer_dir: Path, seed: int
) -> tuple[int, int]:
    """(FLOPs, loss-bearing tokens) of one optimizer step of `config` on these shards, measured."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmforge.training.inputs import resolve_inputs

    inputs = resolve_inputs(config.model_copy(update={"precision": "fp32"}), shards_dir, tokenizer_dir, seed)
    objective = get_objective(config.objective)
    torch.manual_seed(seed)
    # The tokenizer's vocabulary, not the table `vocab_multiple_of` pads on the workers: the budget
    # counts useful FLOPs, so the steps it buys do not depend on the device that trains them.
    model = objective.build_model(config.model, inputs.vocab_size, inputs.seq_len, inputs.special_ids)
    model.set_attn_implementation("eager")
    rows = load_split(Path(shards_dir), "train")[: config.micro_batch_size]
    context = BatchContext(
        special_ids=inputs.special_ids,
        vocab_size=inputs.vocab_size,
        config=config,
        generator=masking_generator(seed, 0, 0, 0),
        seed=seed,
        sequence_indices=torch.arange(len(rows)).numpy(),
        sentinel_ids=inputs.sentinel_ids,
        continues_word=word_continuation_table(config, Path(tokenizer_dir)),
    )
    batch = objective.prepare_batch(rows, context)
    with FlopCounterMode(display=False) as counter:
        sums = objective.forward(model, batch)
        objective.training_loss(sums).backward()
    per_step = config.gradient_accumulation_steps * config.num_workers
    return int(counter.get_total_flops()) * per_step, int(sums["count"]) * per_step


def plan_budget(config: PretrainConfig, shards_dir: Path, tokenizer_dir: Path, seed: int) -> StepBudget:
    """`max_steps` = floor(compute_budget_flops / measured FLOPs per step); warmup scaled to fit.

    The configured `warmup_steps` is kept when it fits in a tenth of the derived steps, else cut to
    that tenth (at least one step), and the cut is logged.
    """
    budget = config.compute_budget_flops
    if budget is None:
        raise ValueError("plan_budget needs pretrain.compute_budget_flops")
    flops, loss_tokens = measure_step_flops(config, shards_dir, tokenizer_dir, seed)
    max_steps = math.floor(budget / flops)
    if max_steps < 1:
        raise ConfigError(
            f"pretrain.compute_budget_flops {budget:.3g} buys no step of objective {config.objective!r}: "
            f"one step measures {flops:.3g} FLOPs; raise the budget or shrink the model or batch"
        )
    warmup = min(config.warmup_steps, max(1, max_steps // 10))
    if warmup < config.warmup_steps:
        log.info(
            "%s: warmup cut from %d to %d steps to fit %d budgeted steps",
            config.objective,
            config.warmup_steps,
            warmup,
            max_steps,
        )
    log.info(
        "%s: %.3g FLOPs per step (measured) -> %d steps for a budget of %.3g FLOPs",
        config.objective,
        flops,
        max_steps,
        budget,
    )
    return StepBudget(flops, loss_tokens, max_steps, warmup)
