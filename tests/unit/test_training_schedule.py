"""Warmup + decay learning-rate schedule, checked at hand-computed points and through LambdaLR."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.training.schedule import lr_lambda, lr_multiplier

pytestmark = pytest.mark.unit


def test_warmup_is_linear_to_peak():
    assert [lr_multiplier(step, 4, 20) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_ends_at_floor_and_stays(decay):
    assert lr_multiplier(4, 4, 20, decay, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(19, 4, 20, decay, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(500, 4, 20, decay, 0.1) == pytest.approx(0.1)


def test_midpoints():
    # warmup 10, last update 110: decay spans updates 10..109 -> 99 intervals; midpoint at 10 + 49.5.
    cosine_mid = lr_multiplier(10 + 33, 10, 110, "cosine", 0.0)
    assert cosine_mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 33 / 99)))
    assert lr_multiplier(10 + 33, 10, 110, "linear", 0.2) == pytest.approx(0.2 + 0.8 * (1 - 33 / 99))
    assert lr_multiplier(77, 10, 110, "constant", 0.2) == 1.0


def test_no_warmup_starts_at_peak():
    assert lr_multiplier(0, 0, 10, "cosine", 0.1) == 1.0


def test_lambda_lr_applies_schedule_per_update():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(2, 6, "linear", 0.5))
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # updates 0..1 warm up; 2..5 decay linearly from 1 to 0.5 over 3 intervals; then the floor.
    expected = [1.0, 2.0, 2.0, 2 * (0.5 + 0.5 * 2 / 3), 2 * (0.5 + 0.5 / 3), 1.0, 1.0]
    assert seen == pytest.approx(expected)
