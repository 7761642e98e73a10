"""The per-worker pre-training loop: data, steps, logging, evaluation, checkpoints.

Framework seams stay outside: DeepSpeed calls go through `training.deepspeed_setup`, and the
worker's Ray Train context arrives as a `WorkerEnv` (see `training.launcher`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from lmforge.core.errors import DataError
from lmforge.core.logs import get_logger
from lmforge.training import deepspeed_setup
from lmforge.training.data import TrainStream, eval_batches, load_split
from lmforge.training.flops import measure_matmul_peak, model_flops_per_token
from lmforge.training.inputs import LoopInputs
from lmforge.training.masking import EVAL_STREAM, IGNORE_INDEX, masking_generator
from lmforge.training.metrics import (
    MetricsLog,
    TrainClock,
    all_gather_float,
    all_reduce_sum,
    barrier,
    synchronize,
)
from lmforge.training.models import count_parameters
from lmforge.training.objectives import get_objective

log = get_logger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_SECONDS = 1.0
PEAK_REPEATS = 3


class WorkerEnv(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def restored_checkpoint(self) -> AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class PretrainLoop:
    def __init__(self, inputs: LoopInputs, env: WorkerEnv) -> None:
        self.inputs, self.env, self.config = inputs, env, inputs.config
        self.objective = get_objective(self.config.objective)
        self.is_writer = env.rank == 0
        self.metrics = MetricsLog()
        self.clock = TrainClock()
        self.step = 0

    def run(self) -> None:
        worker_start_time = time.time()
        self._load_data()
        num_parameters = self._build_engine()
        # After start-up, with all workers measuring at once: the peak includes their mutual contention
        # but not Ray's and DeepSpeed's start-up work, which made early measurements up to 2x low.
        barrier()
        peak = measure_matmul_peak(
            DTYPES[self.config.precision], PEAK_SECONDS, self.env.device, repeats=PEAK_REPEATS
        )
        peaks = all_gather_float(peak, self.env.device)
        self._maybe_resume()
        self.metrics.add(
            "start",
            self.step,
            num_parameters=num_parameters,
            flops_per_token=self.flops_per_token,
            peak_flops_per_second=sum(peaks),
            peak_flops_per_worker=peaks,
            world_size=self.env.world_size,
            device=self.env.device.type,
            dtype=self.config.precision,
            # Wall-clock marks (Unix seconds) to attribute start-up time: Ray vs DeepSpeed.
            worker_start_time=worker_start_time,
            peak_seconds=PEAK_SECONDS,
            ready_time=time.time(),
        )
        log.info("rank %d: %d parameters, peak %.3g FLOP/s", self.env.rank, num_parameters, peak)
        self._train()
        self._checkpoint(final=True)

    def _load_data(self) -> None:
        shards_dir = Path(self.inputs.shards_dir)
        self.train = load_split(shards_dir, "train")
        self.validation = load_split(shards_dir, "validation")
        largest = int(max(self.train.max(), self.validation.max()))
        if largest >= self.inputs.vocab_size:
            raise DataError(
                f"{shards_dir}: token id {largest} is outside the tokenizer's vocabulary of "
                f"{self.inputs.vocab_size} ({self.inputs.tokenizer_dir})"
            )
        self.stream = TrainStream(
            len(self.train),
            self.env.rank,
            self.env.world_size,
            self.config.micro_batch_size,
            self.inputs.seed,
        )

    def _build_engine(self) -> int:
        """Build the model (same init on every rank) and its DeepSpeed engine; returns the parameter count."""
        torch.manual_seed(self.inputs.seed)
        model = self.objective.build_model(
            self.config.model, self.inputs.vocab_size, self.inputs.seq_len, self.inputs.special_ids
        )
        self.flops_per_token = model_flops_per_token(model, self.inputs.seq_len)
        num_parameters = count_parameters(model)
        self.engine, self.optimizer, _ = deepspeed_setup.initialize(model, self.config, self.env.world_size)
        torch.manual_seed(self.inputs.seed + 1 + self.env.rank)  # dropout masks differ per rank
        return num_parameters

    def _maybe_resume(self) -> None:
        with self.env.restored_checkpoint() as directory:
            if directory is None:
                return
            self.step = deepspeed_setup.load_checkpoint(self.engine, directory / "deepspeed")
            state = json.loads((directory / "loop_state.json").read_text())
            self.clock = TrainClock(state["train_seconds"])
            self.metrics = MetricsLog.load(directory, self.step)
            log.info("rank %d: resumed at step %d", self.env.rank, self.step)

    def _train(self) -> None:
        config = self.config
        tokens_per_step = (
            self.env.world_size
            * config.micro_batch_size
            * config.gradient_accumulation_steps
            * self.inputs.seq_len
        )
        interval_loss, interval_steps = torch.zeros((), device=self.env.device), 0
        interval_start_seconds = self.clock.read()
        self.engine.train()
        self.clock.start()
        while self.step < config.max_steps:
            lr = self.optimizer.param_groups[0]["lr"]
            step_loss = self._train_step()
            self.step += 1
            interval_loss, interval_steps = interval_loss + step_loss, interval_steps + 1
            if self.step == 1 or self.step % config.log_every == 0 or self.step == config.max_steps:
                synchronize(self.env.device)
                total_loss, total_steps = all_reduce_sum(
                    [interval_loss.item(), interval_steps], self.env.device
                )
                seconds = self.clock.read()
                interval_seconds = seconds - interval_start_seconds
                tokens_per_second = tokens_per_step * interval_steps / interval_seconds
                self._log(
                    "train",
                    loss=total_loss / total_steps,
                    lr=lr,
                    epoch=self.stream.batch(self.step * config.gradient_accumulation_steps - 1)[0],
                    tokens_per_second=tokens_per_second,
                    mfu=self.flops_per_token * tokens_per_second / self._peak(),
                    num_tokens=tokens_per_step * self.step,
                    train_seconds=seconds,
                )
                interval_loss, interval_steps, interval_start_seconds = (
                    torch.zeros_like(interval_loss),
                    0,
                    seconds,
                )
            if self.step % config.eval_every == 0 or self.step == config.max_steps:
                self.clock.stop()
                # The last evaluation covers the whole validation split: it is the reported val loss.
                self._evaluate(None if self.step == config.max_steps else config.eval_batches)
                self.clock.start()
            if (
                config.checkpoint_every
                and self.step % config.checkpoint_every == 0
                and self.step < config.max_steps
            ):
                self.clock.stop()
                self._checkpoint(final=False)
                self.clock.start()
        self.clock.stop()

    def _train_step(self) -> torch.Tensor:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; returns the mean loss.

        The loss stays a tensor so the host only waits for the device at log time.
        """
        config, inputs = self.config, self.inputs
        total = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for micro in range(config.gradient_accumulation_steps):
            index = self.step * config.gradient_accumulation_steps + micro
            epoch, indices = self.stream.batch(index)
            # Masks derive from (seed, epoch, rank, micro-batch): reproducible, fresh every epoch.
            generator = masking_generator(inputs.seed, epoch, self.env.rank, index)
            batch = self._to_device(
                self.objective.prepare_batch(
                    self.train[torch.from_numpy(indices)],
                    inputs.special_ids,
                    inputs.vocab_size,
                    config.masking,
                    generator,
                )
            )
            loss_sum, count = self.objective.loss_sum(self.engine, batch)
            loss = loss_sum / count.clamp(min=1)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        return total / config.gradient_accumulation_steps

    @torch.no_grad()
    def _evaluate(self, max_batches: int | None) -> None:
        """Token-weighted validation loss over all ranks; MLM eval masks are fixed across evaluations."""
        config, inputs = self.config, self.inputs
        self.engine.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        count = torch.zeros((), dtype=torch.float64, device=self.env.device)
        batches = eval_batches(
            len(self.validation),
            self.env.rank,
            self.env.world_size,
            config.micro_batch_size,
            max_batches,
        )
        for batch_index, indices in enumerate(batches):
            padding = torch.from_numpy(indices < 0)
            generator = masking_generator(inputs.seed, EVAL_STREAM, self.env.rank, batch_index)
            batch = self.objective.prepare_batch(
                self.validation[torch.from_numpy(indices.clip(min=0))],
                inputs.special_ids,
                inputs.vocab_size,
                config.masking,
                generator,
            )
            batch["labels"][padding] = IGNORE_INDEX  # padding rows only keep ZeRO-3 ranks in step
            batch_loss, batch_count = self.objective.loss_sum(self.engine, self._to_device(batch))
            loss_sum += batch_loss.double()
            count += batch_count.double()
        total_loss, total_count = all_reduce_sum([loss_sum.item(), count.item()], self.env.device)
        self.engine.train()
        val_loss = total_loss / max(total_count, 1.0)
        extra = {"val_perplexity": math.exp(val_loss)} if self.objective.packing == "clm" else {}
        self._log("eval", val_loss=val_loss, num_eval_tokens=int(total_count), **extra)

    def _checkpoint(self, final: bool) -> None:
        """Collective: every rank saves its shards into its own folder and reports it (a Ray barrier)."""
        with tempfile.TemporaryDirectory(prefix="lmforge-ckpt-") as tmp:
            directory = Path(tmp)
            deepspeed_setup.save_checkpoint(self.engine, directory / "deepspeed", self.step)
            if final:
                deepspeed_setup.export_hf(
                    self.engine,
                    self.config.zero_stage,
                    Path(self.inputs.tokenizer_dir),
                    directory / "hf",
                    self.is_writer,
                    self._export_metadata(),
                )
            if self.is_writer:
                self.metrics.write(directory)
                state = {"step": self.step, "train_seconds": self.clock.read()}
                (directory / "loop_state.json").write_text(json.dumps(state) + "\n")
                if final:
                    summary = self.metrics.summary(clm=self.objective.packing == "clm")
                    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.env.report({"step": self.step, "final": final}, directory)

    def _export_metadata(self) -> dict[str, Any]:
        return {
            "objective": self.config.objective,
            "auto_model_class": self.objective.auto_model_class,
            "seq_len": self.inputs.seq_len,
            "seed": self.inputs.seed,
            "steps": self.step,
            "special_ids": self.inputs.special_ids,
            "pretrain_config": self.config.model_dump(mode="json"),
        }

    def _log(self, event: str, **values: Any) -> None:
        if not self.is_writer:
            return
        record = self.metrics.add(event, self.step, **values)
        shown = " ".join(f"{key}={_short(value)}" for key, value in record.items() if key != "event")
        log.info("%s %s", event, shown)

    def _peak(self) -> float:
        return self.metrics.of("start")[-1]["peak_flops_per_second"] if self.is_writer else math.inf

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.env.device, non_blocking=True) for key, value in batch.items()}


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
