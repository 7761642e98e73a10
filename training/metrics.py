"""Cross-rank reductions, the train clock, and the metrics event log (metrics.jsonl + run summary)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

METRICS_FILE = "metrics.jsonl"


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


class MetricsLog:
    """Events in memory (rank 0), saved as metrics.jsonl inside each checkpoint and restored on resume."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events = list(events or [])

    @classmethod
    def load(cls, directory: Path, up_to_step: int) -> MetricsLog:
        path = directory / METRICS_FILE
        if not path.exists():
            return cls()
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # A start event is re-written by the resumed run; later events are replayed from the step.
        return cls([event for event in events if event["event"] != "start" and event["step"] <= up_to_step])

    def add(self, event: str, step: int, **values: Any) -> dict[str, Any]:
        record = {"event": event, "step": step, **values}
        self.events.append(record)
        return record

    def write(self, directory: Path) -> None:
        lines = [json.dumps(event, sort_keys=True) for event in self.events]
        (directory / METRICS_FILE).write_text("".join(line + "\n" for line in lines))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.events if record["event"] == event]

    def summary(self, clm: bool) -> dict[str, Any]:
        """The pretrain() result: curves and the last/first values of the logged events."""
        train, evals, starts = self.of("train"), self.of("eval"), self.of("start")
        start = starts[-1] if starts else {}
        last = train[-1] if train else {}
        train_seconds = last.get("train_seconds", 0.0)
        num_tokens = last.get("num_tokens", 0)
        tokens_per_second = num_tokens / train_seconds if train_seconds else 0.0
        peak = start.get("peak_flops_per_second", 0.0)
        summary: dict[str, Any] = {
            "num_parameters": start.get("num_parameters"),
            "initial_train_loss": train[0]["loss"] if train else None,
            "final_train_loss": last.get("loss"),
            "final_val_loss": evals[-1]["val_loss"] if evals else None,
            "tokens_per_second": tokens_per_second,
            "mfu": start.get("flops_per_token", 0) * tokens_per_second / peak if peak else None,
            "peak_flops_per_second": peak,
            "peak_flops_per_worker": start.get("peak_flops_per_worker"),
            "flops_per_token": start.get("flops_per_token"),
            "train_seconds": train_seconds,
            "num_tokens_trained": num_tokens,
            "loss_curve": [[record["step"], record["loss"]] for record in train],
            "val_curve": [[record["step"], record["val_loss"]] for record in evals],
        }
        if clm:
            summary["val_perplexity"] = math.exp(summary["final_val_loss"]) if evals else None
        return summary
