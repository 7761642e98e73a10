"""Cross-rank reductions, the train clock, event logs (metrics.jsonl, telemetry) and the run summary."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# A step's records in a fixed order, so a log's bytes do not depend on when records were flushed.
EVENT_ORDER = ("start", "resume", "placement", "train", "speed", "eval")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (identity when not distributed); float64 so token counts stay exact."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_float(value: float, device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor([value], dtype=torch.float64, device=device))
    return [item.item() for item in gathered]


def all_gather_object(value: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainClock:
    """Wall time spent in training steps only (evaluation and checkpoints paused out)."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.elapsed = elapsed
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self.elapsed += time.perf_counter() - self._started
            self._started = None

    def read(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.elapsed + running


class EventLog:
    """Records in memory (rank 0), written as JSON lines into each checkpoint and restored on resume."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events = list(events or [])

    @classmethod
    def load(cls, path: Path, up_to_step: int) -> EventLog:
        """The records of `path` up to `up_to_step`: the resumed run re-does the steps after it."""
        if not path.exists():
            return cls()
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return cls([event for event in events if event["step"] <= up_to_step])

    def add(self, event: str, step: int, **values: Any) -> dict[str, Any]:
        record = {"event": event, "step": step, **values}
        self.events.append(record)
        return record

    def canonical(self) -> list[dict[str, Any]]:
        """Records by step, then event kind (stable within a kind)."""
        rank = {name: index for index, name in enumerate(EVENT_ORDER)}
        return sorted(self.events, key=lambda e: (e["step"], rank.get(e["event"], len(rank))))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(event, sort_keys=True) for event in self.canonical()]
        path.write_text("".join(line + "\n" for line in lines))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.canonical() if record["event"] == event]

    def last(self, event: str) -> dict[str, Any]:
        records = self.of(event)
        return records[-1] if records else {}


def run_summary(
    metrics: EventLog, telemetry: EventLog, clm: bool, curve_step: Callable[[int], bool]
) -> dict[str, Any]:
    """The pretrain() result: first/last losses, curves at `curve_step` steps, speed and MFU, and how
    the run went: the Ray node of each rank (last attempt) and each resume's step, oldest first."""
    train, evals = metrics.of("train"), metrics.of("eval")
    start, last = metrics.last("start"), (train[-1] if train else {})
    summary: dict[str, Any] = {
        "num_parameters": start.get("num_parameters"),
        "flops_per_token": start.get("flops_per_token"),
        "initial_train_loss": train[0]["loss"] if train else None,
        "final_train_loss": last.get("loss"),
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        # Token accuracy on the objective's targets (next token, masked tokens, span fills).
        "final_val_accuracy": evals[-1].get("val_accuracy") if evals else None,
        "tokens_per_step": start.get("tokens_per_step"),
        "num_tokens_trained": last.get("num_tokens", 0),
        "loss_curve": [[record["step"], record["loss"]] for record in train if curve_step(record["step"])],
        "val_curve": [[record["step"], record["val_loss"]] for record in evals],
    }
    if clm:
        summary["val_perplexity"] = math.exp(summary["final_val_loss"]) if evals else None
    if evals and "val_pair_accuracy" in evals[-1]:
        summary["final_val_pair_accuracy"] = evals[-1]["val_pair_accuracy"]
        summary["final_val_pair_loss"] = evals[-1]["val_pair_loss"]
    summary.update(speed_summary(telemetry, summary["num_tokens_trained"], summary["flops_per_token"]))
    summary["worker_nodes"] = telemetry.last("placement").get("worker_nodes")
    summary["peak_rss_bytes_per_worker"] = telemetry.last("memory").get("peak_rss_bytes")
    summary["restarts"] = [{"from_step": record["step"]} for record in telemetry.of("resume")]
    return summary


def speed_summary(telemetry: EventLog, num_tokens: int, flops_per_token: int | None) -> dict[str, Any]:
    """tokens/s over all training time, tokens/s after step 1, and MFU against the measured and (GPU)
    nominal peaks.

    MFU uses the tokens/s after step 1, which leaves out compilation and allocator warm-up (on a GPU
    with torch.compile step 1 can take longer than a hundred steps after it); runs of one step, or
    without a step-1 speed record, use all training time.
    """
    start, speed = telemetry.last("start"), telemetry.last("speed")
    train_seconds = speed.get("train_seconds", 0.0)
    tokens_per_second = num_tokens / train_seconds if train_seconds else None
    first = next((record for record in telemetry.of("speed") if record["step"] == 1), None)
    after_step1 = None
    if first is not None and speed.get("step", 1) > 1 and "num_tokens" in speed and "num_tokens" in first:
        seconds = train_seconds - first["train_seconds"]
        after_step1 = (speed["num_tokens"] - first["num_tokens"]) / seconds if seconds > 0 else None
    steady = after_step1 or tokens_per_second
    achieved = flops_per_token * steady if flops_per_token and steady else None
    peak = start.get("peak_flops_per_second")
    nominal = start.get("nominal_peak_flops_per_second")
    mfu = achieved / peak if achieved and peak else None
    return {
        "tokens_per_second": tokens_per_second,
        "steady_tokens_per_second": after_step1,
        "train_seconds": train_seconds,
        "mfu_vs_measured_peak": mfu,
        "mfu": mfu,  # alias of mfu_vs_measured_peak, kept for readers of older summaries
        "mfu_vs_nominal_peak": achieved / nominal if achieved and nominal else None,
        "peak_flops_per_second": peak,
        "peak_flops_per_worker": start.get("peak_flops_per_worker"),
        # A run cannot beat its own matmul peak: above it, the peak was measured while the cores
        # were busy (or on smaller matmuls than the model's), and the MFU is not meaningful.
        "peak_suspect": bool(start.get("peak_suspect")) or (mfu is not None and mfu > 1.0),
        "nominal_peak_flops_per_second": nominal,
    }
