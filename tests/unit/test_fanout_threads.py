"""A fan-out Ray task computes on as many torch threads as the CPUs Ray assigned it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lmforge.flows import steps
from lmforge.infra.ray_runtime import assigned_cpus, run_remote

pytestmark = pytest.mark.unit


def test_task_threads_sets_then_restores() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with steps.task_threads(3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_task_threads_restores_after_an_error() -> None:
    previous = torch.get_num_threads()
    with pytest.raises(ValueError), steps.task_threads(previous + 1):
        raise ValueError("task failed")
    assert torch.get_num_threads() == previous


def test_assigned_cpus_outside_a_task_is_the_default(ray_runtime) -> None:
    assert assigned_cpus(default=5) == 5


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_a_fan_out_task_computes_on_its_cpu_share(ray_runtime, num_cpus: int) -> None:
    # Defined here, so Ray ships them by value (this test module is not importable on a worker).
    def thread_counts(_output_dir: Path) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "assigned": assigned_cpus(default=0)}

    def leave_threads(num_threads: int) -> int:
        """A task that leaves its worker's torch on `num_threads` (as a task without the guard may)."""
        torch.set_num_threads(num_threads)
        return torch.get_num_threads()

    # Workers outlive tasks: leave every idle worker's torch on a different count first, so a task
    # that kept what the worker had would fail here.
    other = 3 - num_cpus
    assert run_remote(leave_threads, other, num_cpus=2) == other
    assert all(count == other for count in [run_remote(leave_threads, other, num_cpus=1) for _ in range(3)])
    metrics, files = run_remote(steps._collect_output, thread_counts, num_cpus=num_cpus)
    assert metrics == {"threads": num_cpus, "assigned": num_cpus}
    assert files == {}
