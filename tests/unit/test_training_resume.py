"""Loop state files: the torch RNG state round-trips through JSON exactly, other threads' draws from
the global Python generator do not change the file; errors name the file."""

from __future__ import annotations

import random
import threading

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


def draws() -> tuple[torch.Tensor, torch.Tensor]:
    # randn leaves no cached Gaussian in torch's CPU state for 16+ values; a single one does.
    return torch.rand(5), torch.randn(1)


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
    assert all(torch.equal(a, b) for a, b in zip(again, expected, strict=True))


def test_state_files_are_deterministic_bytes(tmp_path):
    for name in ("a", "b"):
        seed_everything(4)
        draws()
        write_loop_state(tmp_path / name, 0, LoopState(2, 2, capture_rng(CPU)))
    assert state_path(tmp_path / "a", 0).read_bytes() == state_path(tmp_path / "b", 0).read_bytes()


def test_other_threads_drawing_from_global_generators_do_not_change_the_state(tmp_path):
    def keep_alive_ping() -> None:  # what Prefect's websocket client does in its event-loop thread
        random.getrandbits(32)
        np.random.rand()

    for name, background in (("quiet", None), ("pinged", keep_alive_ping)):
        seed_everything(4)
        draws()
        if background is not None:
            thread = threading.Thread(target=background)
            thread.start()
            thread.join()
        write_loop_state(tmp_path / name, 0, LoopState(2, 2, capture_rng(CPU)))
    assert state_path(tmp_path / "quiet", 0).read_bytes() == state_path(tmp_path / "pinged", 0).read_bytes()


def test_missing_or_broken_state_names_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"rank-00001\.json.*num_workers"):
        read_loop_state(tmp_path, 1)
    state_path(tmp_path, 0).parent.mkdir(parents=True)
    state_path(tmp_path, 0).write_text("{}")
    with pytest.raises(ArtifactError, match=r"rank-00000\.json: not a loop state"):
        read_loop_state(tmp_path, 0)
