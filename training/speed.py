"""Speed monitor: the MFU denominator (measured and nominal peaks), tokens/s, and train seconds."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.core.logs import get_logger
from lmforge.training.artifact import CLOCK_FILE
from lmforge.training.flops import checked_peak, measure_matmul_peak, nominal_peak, plausible_peak_floor
from lmforge.training.hooks import Callback
from lmforge.training.metrics import TrainClock, all_gather_float, all_gather_object, barrier, synchronize

if TYPE_CHECKING:
    from lmforge.training.loop import PretrainLoop

log = get_logger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_SECONDS = 1.0
PEAK_REPEATS = 3


class SpeedMonitor(Callback):
    """Times training steps only and writes telemetry records; must come first in the callback list,
    so other callbacks' step-end work (evaluation, checkpoints) stays outside the step time."""

    def __init__(self, peak_seconds: float = PEAK_SECONDS, peak_repeats: int = PEAK_REPEATS) -> None:
        self.peak_seconds, self.peak_repeats = peak_seconds, peak_repeats
        self.clock = TrainClock()
        self.peak = float("inf")

    def on_resume(self, loop: PretrainLoop, directory: Path) -> None:
        path = directory / CLOCK_FILE
        if path.exists():  # only the writer rank saves it, and only the writer reports speed
            self.clock = TrainClock(json.loads(path.read_text())["train_seconds"])

    def on_start(self, loop: PretrainLoop) -> None:
        # After start-up and a barrier, all workers measuring at once: the peak includes their mutual
        # contention but not Ray's and DeepSpeed's start-up work, which read up to 2x low.
        barrier()
        device, precision = loop.env.device, loop.inputs.precision
        peak, suspect = self._measure_peak(loop)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peaks = all_gather_float(peak, device)
        suspects = all_gather_float(float(suspect), device)
        nominals = all_gather_float(nominal_peak(name, precision) or 0.0, device)
        hosts = all_gather_object(socket.gethostname())
        self.peak = sum(peaks)
        loop.record(
            "start",
            telemetry=True,
            peak_flops_per_second=self.peak,
            peak_flops_per_worker=peaks,
            peak_suspect=any(suspects),
            nominal_peak_flops_per_second=sum(nominals) if all(nominals) else None,
            device_name=name,
            hosts=hosts,
            precision_reason=loop.inputs.precision_reason,
            # Wall-clock marks (Unix seconds) to attribute start-up time: Ray vs DeepSpeed.
            worker_start_time=loop.worker_start_time,
            peak_seconds=self.peak_seconds * self.peak_repeats,
            ready_time=time.time(),
        )
        log.info("rank %d: %s matmul peak %.3g FLOP/s", loop.env.rank, precision, peak)
        self.interval_step, self.interval_seconds = loop.step, self.clock.read()

    def _measure_peak(self, loop: PretrainLoop) -> tuple[float, bool]:
        """This rank's matmul peak in the training dtype, and whether it is implausibly low."""
        device, precision = loop.env.device, loop.inputs.precision
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        floor = plausible_peak_floor(device, precision, nominal_peak(name, precision))
        peak, suspect = checked_peak(
            lambda: measure_matmul_peak(
                DTYPES[precision], self.peak_seconds, device, repeats=self.peak_repeats
            ),
            floor,
        )
        if suspect:
            log.warning(
                "rank %d: %s matmul peak %.3g FLOP/s is below the plausible %.3g even when measured "
                "again: the cores are busy or %s is emulated here; MFU against it is not meaningful",
                loop.env.rank, precision, peak, floor, precision,
            )  # fmt: skip
        return peak, suspect

    def on_step_start(self, loop: PretrainLoop) -> None:
        self.clock.start()

    def on_step_end(self, loop: PretrainLoop) -> None:
        if not loop.is_log_step():
            self.clock.stop()
            return
        # Wait for the device at log steps only, so the interval's time is complete without a
        # host sync every step.
        synchronize(loop.env.device)
        self.clock.stop()
        seconds = self.clock.read()
        steps = loop.step - self.interval_step
        tokens_per_second = loop.tokens_per_step * steps / max(seconds - self.interval_seconds, 1e-9)
        loop.record(
            "speed",
            telemetry=True,
            tokens_per_second=tokens_per_second,
            mfu_vs_measured_peak=loop.flops_per_token * tokens_per_second / self.peak,
            train_seconds=seconds,
            num_tokens=loop.tokens_per_step * loop.step,
        )
        self.interval_step, self.interval_seconds = loop.step, seconds

    def on_save(self, loop: PretrainLoop, directory: Path, final: bool) -> None:
        if loop.is_writer:
            path = directory / CLOCK_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"train_seconds": self.clock.read()}) + "\n")
