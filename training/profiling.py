"""Where a training step's time goes: named phases for torch.profiler, and the per-step breakdown.

The loop marks its phases with `record_function(PHASES.<name>)`; outside a profiler that costs a few
microseconds per step. `StepProfiler` (a callback, on when `pretrain.profile` is set) records the
configured steps on every rank and logs a `profile` telemetry record; `phase_breakdown` turns the
profiler's events into seconds per step, which benchmarks also use for their baselines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd import DeviceType

from lmforge.core.logs import get_logger
from lmforge.training.hooks import Callback
from lmforge.training.metrics import all_gather_object

if TYPE_CHECKING:
    from lmforge.training.config import ProfileConfig
    from lmforge.training.loop import PretrainLoop

log = get_logger(__name__)


@dataclass(frozen=True)
class Phases:
    data: str = "lmforge/data"
    forward: str = "lmforge/forward"
    backward: str = "lmforge/backward"
    optimizer: str = "lmforge/optimizer"


PHASES = Phases()
# Collective operations of torch.distributed (gloo, NCCL) and DeepSpeed's CPU comm op, by event name.
COMMUNICATION = re.compile(r"all_?reduce|reduce_?scatter|all_?gather|broadcast|barrier|allgather", re.I)
TOP_OPS = 8


def phase_breakdown(events: Iterable[Any], steps: int, wall_seconds: float) -> dict[str, Any]:
    """Seconds per step by phase from torch.profiler `events` (FunctionEvents) over `steps` steps.

    `other` is the step wall time not inside any phase (callbacks, Python between phases).
    `communication` is the time inside collective operations, counted once where they nest, and
    split by the phase they ran in; it is part of that phase's time, not added to it. Times are
    host (CPU) times: on GPU they include waiting for kernels only where the host waits. Where the
    profiler saw device kernels (GPU), `device_busy_seconds` is their summed time per step (kernels
    counted once, overlap not merged) and `top_kernels_device_seconds` the largest by name: a
    device busy far less than the step is waiting on the host.
    """
    names = {name: field for field, name in zip(Phases.__dataclass_fields__, astuple(PHASES), strict=True)}
    phases = dict.fromkeys(names.values(), 0.0)
    communication: dict[str, float] = {}
    self_time: dict[str, float] = {}
    device_time: dict[str, float] = {}
    events = list(events)
    for event in events:
        seconds = event.cpu_time_total / 1e6
        self_time[event.name] = self_time.get(event.name, 0.0) + event.self_cpu_time_total / 1e6
        if _is_kernel(event):
            on_device = event.self_device_time_total / 1e6
            device_time[event.name] = device_time.get(event.name, 0.0) + on_device
        if event.name in names:
            phases[names[event.name]] += seconds
        elif COMMUNICATION.search(event.name) and not _has_ancestor(
            event, lambda e: bool(COMMUNICATION.search(e.name))
        ):
            phase = _phase_of(event, names)
            communication[phase] = communication.get(phase, 0.0) + seconds
    per_step = {field: seconds / steps for field, seconds in phases.items()}
    step_seconds = wall_seconds / steps
    per_step["other"] = max(step_seconds - sum(per_step.values()), 0.0)
    top = sorted(self_time.items(), key=lambda item: item[1], reverse=True)[:TOP_OPS]
    result = {
        "steps": steps,
        "step_seconds": step_seconds,
        "phases": per_step,
        "communication": sum(communication.values()) / steps,
        "communication_by_phase": {
            phase: seconds / steps for phase, seconds in sorted(communication.items())
        },
        "top_ops_self_seconds": {name: seconds / steps for name, seconds in top},
    }
    if device_time:
        kernels = sorted(device_time.items(), key=lambda item: item[1], reverse=True)[:TOP_OPS]
        result["device_busy_seconds"] = sum(device_time.values()) / steps
        result["top_kernels_device_seconds"] = {name: seconds / steps for name, seconds in kernels}
    return result


def _is_kernel(event: Any) -> bool:
    """A device-side kernel (or memcpy): not a host op, whose device time repeats its kernels', and not
    a user annotation's device-side span (record_function ranges, compiled regions)."""
    device_type = getattr(event, "device_type", DeviceType.CPU)
    return device_type != DeviceType.CPU and not getattr(event, "is_user_annotation", False)


def _has_ancestor(event: Any, predicate: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if predicate(parent):
            return True
        parent = parent.cpu_parent
    return False


def _phase_of(event: Any, names: dict[str, str]) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return names[parent.name]
        parent = parent.cpu_parent
    return "other"


def new_profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


class StepProfiler(Callback):
    """Profiles `config.steps` steps from `config.start_step` on every rank (a collective at the end).

    The profiler starts and stops between steps (after the speed monitor has stopped its clock), so
    its set-up and the breakdown's computation stay out of the step times; the profiled steps
    themselves run slower by the profiler's per-operator overhead.
    """

    def __init__(self, config: ProfileConfig) -> None:
        self.config = config
        self.profiler: torch.profiler.profile | None = None
        self.started = 0.0

    def on_start(self, loop: PretrainLoop) -> None:
        self._maybe_start(loop)

    def on_step_end(self, loop: PretrainLoop) -> None:
        if self.profiler is not None and not self.config.covers(loop.step + 1):
            self._stop(loop)
        self._maybe_start(loop)

    def _maybe_start(self, loop: PretrainLoop) -> None:
        next_step = loop.step + 1
        if (
            self.profiler is None
            and next_step == self.config.start_step
            and next_step <= loop.config.max_steps
        ):
            self.profiler = new_profiler(loop.env.device)
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def _stop(self, loop: PretrainLoop) -> None:
        assert self.profiler is not None
        wall = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)
        steps = loop.step - self.config.start_step + 1
        breakdown = phase_breakdown(self.profiler.events(), steps, wall)
        self.profiler = None
        per_rank = all_gather_object(breakdown)
        loop.record("profile", telemetry=True, first_step=self.config.start_step, ranks=per_rank)
        if loop.is_writer:
            phases = " ".join(f"{name}={seconds:.3f}s" for name, seconds in breakdown["phases"].items())
            log.info(
                "profile of steps %d-%d (rank 0, per step): %s communication=%.3fs",
                self.config.start_step, loop.step, phases, breakdown["communication"],
            )  # fmt: skip
