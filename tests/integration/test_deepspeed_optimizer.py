"""DeepSpeed's bf16 optimizers against a mixed-precision AdamW loop written by hand (one gloo rank)."""

from __future__ import annotations

import pytest
import torch

from lmforge.training import ModelConfig, PretrainConfig
from lmforge.training.deepspeed_setup import initialize, parameter_groups
from lmforge.training.objectives import get_objective
from lmforge.training.schedule import lr_lambda

VOCAB, SEQ, STEPS = 512, 32, 5


def config(zero_stage: int) -> PretrainConfig:
    return PretrainConfig(
        objective="clm",
        model=ModelConfig(size="debug"),
        num_workers=1,
        zero_stage=zero_stage,
        micro_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=2,
        max_steps=10,
    )


def build(run: PretrainConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_objective("clm").build_model(run.model, VOCAB, SEQ, {})


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))


def reference_losses(run: PretrainConfig) -> list[float]:
    """bf16 weights compute, fp32 master weights step with torch's AdamW: what every ZeRO stage should do."""
    master, low = build(run), build(run).to(torch.bfloat16)
    with torch.no_grad():  # masters start from the bf16 weights, as DeepSpeed's do
        for weights in master.parameters():
            weights.copy_(weights.to(torch.bfloat16))
    optimizer = torch.optim.AdamW(
        parameter_groups(master, run.weight_decay), lr=run.learning_rate, betas=run.adam_betas
    )
    schedule = lr_lambda(run.warmup_steps, run.max_steps, run.lr_decay, run.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ids, losses = batch(), []
    for _ in range(STEPS):
        with torch.no_grad():
            for weights, weights_master in zip(low.parameters(), master.parameters(), strict=True):
                weights.copy_(weights_master)
        loss = low(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        for weights, weights_master in zip(low.parameters(), master.parameters(), strict=True):
            weights_master.grad, weights.grad = weights.grad.float(), None
        torch.nn.utils.clip_grad_norm_(master.parameters(), run.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


@pytest.mark.integration
@pytest.mark.parametrize("zero_stage", [0, 1])
def test_bf16_engine_steps_like_a_hand_written_fp32_master_adamw(single_process_group, zero_stage):
    run = config(zero_stage)
    engine, optimizer, _ = initialize(build(run), run, world_size=1, precision="bf16")
    inner = getattr(optimizer, "optimizer", optimizer)
    # ZeRO 0 wraps AdamW in FP16_UnfusedOptimizer, whose constructor steps it once on zero gradients.
    assert not inner.state, "AdamW has state before the first training step"
    ids, losses = batch(), []
    for step in range(1, STEPS + 1):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        assert {float(state["step"]) for state in inner.state.values()} == {float(step)}
    # Without the fix the ZeRO-0 engine's second loss was 6.125 against 6.092 here.
    torch.testing.assert_close(losses, reference_losses(run), rtol=1e-5, atol=0)
