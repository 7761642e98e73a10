"""Loop state files: RNG states round-trip through JSON exactly; errors name the file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmforge.core.errors import ArtifactError
from lmforge.training.resume import (
    LoopState,
    capture_rng,
    read_loop_state,
    restore_rng,
    seed_everything,
    state_path,
    write_loop_state,
)

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def draws() -> tuple[torch.Tensor, np.ndarray, float, float]:
    # np.random.randn leaves a cached Gaussian in numpy's state: the round trip must keep it too.
    return torch.rand(5), np.random.randn(3), random.random(), random.gauss(0, 1)


def test_rng_states_round_trip_through_the_state_file(tmp_path):
    seed_everything(11)
    draws()
    write_loop_state(tmp_path, 3, LoopState(step=7, next_micro_batch=14, rng=capture_rng(CPU)))
    expected = draws()
    seed_everything(99)  # scramble everything
    state = read_loop_state(tmp_path, 3)
    assert (state.step, state.next_micro_batch) == (7, 14)
    restore_rng(state.rng, CPU)
    again = draws()
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


def test_state_files_are_deterministic_bytes(tmp_path):
    for name in ("a", "b"):
        seed_everything(4)
        draws()
        write_loop_state(tmp_path / name, 0, LoopState(2, 2, capture_rng(CPU)))
    assert state_path(tmp_path / "a", 0).read_bytes() == state_path(tmp_path / "b", 0).read_bytes()


def test_missing_or_broken_state_names_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"rank-00001\.json.*num_workers"):
        read_loop_state(tmp_path, 1)
    state_path(tmp_path, 0).parent.mkdir(parents=True)
    state_path(tmp_path, 0).write_text("{}")
    with pytest.raises(ArtifactError, match=r"rank-00000\.json: not a loop state"):
        read_loop_state(tmp_path, 0)
