"""The per-worker pre-training loop: data, steps through the objective, evaluation, checkpoints.

Everything else (logging, speed and MFU, TensorBoard, periodic checkpoints, HF export) is a callback
(`training.callbacks`). Framework seams stay outside: DeepSpeed calls go through
`training.deepspeed_setup`, and the worker's Ray Train context arrives as a `WorkerEnv`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.profiler import record_function

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.training import deepspeed_setup
from lmforge.training.artifact import DEEPSPEED_DIR, METRICS_FILE, SPEED_FILE, SUMMARY_FILE
from lmforge.training.callbacks import build_callbacks
from lmforge.training.data import TrainStream, eval_batches, load_split
from lmforge.training.flops import model_flops_per_token
from lmforge.training.hooks import Callback
from lmforge.training.inputs import LoopInputs
from lmforge.training.masking import EVAL_STREAM, IGNORE_INDEX, masking_generator
from lmforge.training.metrics import EventLog, all_gather_object, all_reduce_sum, run_summary
from lmforge.training.models import count_parameters, use_attention
from lmforge.training.objectives import BatchContext, Sums, get_objective, word_continuation_table
from lmforge.training.profiling import PHASES
from lmforge.training.resume import (
    LoopState,
    capture_rng,
    read_loop_state,
    restore_rng,
    seed_everything,
    write_loop_state,
)

logger = get_logger(__name__)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class WorkerEnv(Protocol):
    rank: int
    world_size: int
    device: torch.device
    # The cluster node this rank runs on (Ray node id); None outside Ray.
    node_id: str | None

    def restored_checkpoint(self) -> AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class PretrainLoop:
    """Steps the objective on one rank and calls `callbacks` around each step (OLMo-core Trainer-like)."""

    def __init__(
        self, inputs: LoopInputs, env: WorkerEnv, callbacks: Sequence[Callback] | None = None
    ) -> None:
        self.inputs, self.env, self.config = inputs, env, inputs.config
        self.objective = get_objective(self.config.objective)
        self.callbacks = list(build_callbacks(inputs) if callbacks is None else callbacks)
        self.is_writer = env.rank == 0
        self.metrics = EventLog()  # identity: deterministic values only
        self.telemetry = EventLog()  # how the run went: speed, peaks, hosts, times
        self.step, self.next_micro_batch = 0, 0
        self.pending_losses: list[tuple[int, float, int, torch.Tensor]] = []
        self.worker_start_time = time.time()
        self.tokens_per_step = (
            env.world_size
            * self.config.micro_batch_size
            * self.config.gradient_accumulation_steps
            * inputs.seq_len
        )

    def run(self) -> None:
        self._load_data()
        self._build_engine()
        self._maybe_resume()
        # Every attempt: a restart may place the ranks on other nodes.
        self.record("placement", telemetry=True, worker_nodes=all_gather_object(self.env.node_id))
        if self.step == 0:
            self.record(
                "start",
                num_parameters=self.num_parameters,
                model_vocab_size=self.model_vocab_size,
                flops_per_token=self.flops_per_token,
                world_size=self.env.world_size,
                tokens_per_step=self.tokens_per_step,
                precision=self.inputs.precision,
            )
        self._call("on_start")
        self.engine.train()
        while self.step < self.config.max_steps:
            self._call("on_step_start")
            lr = self.optimizer.param_groups[0]["lr"]
            loss = self._train_step()
            self.step += 1
            epoch = (self.next_micro_batch - 1) // self.stream.batches_per_epoch
            self.pending_losses.append((self.step, lr, epoch, loss))
            if self.is_log_step():
                self.flush_train_losses()
            self._call("on_step_end")
        # Peak resident memory of each worker process (the whole attempt), gathered for the summary.
        self.record("memory", telemetry=True, peak_rss_bytes=all_gather_object(peak_rss_bytes()))
        self.save(final=True)
        self._call("on_train_end")

    def is_log_step(self, step: int | None = None) -> bool:
        """Steps where ranks agree on the loss and speed is reported (the first, every log_every, the last)."""
        step = self.step if step is None else step
        return step == 1 or step % self.config.log_every == 0 or step == self.config.max_steps

    def record(self, event: str, telemetry: bool = False, step: int | None = None, **values: Any) -> None:
        """Add a record (writer rank only) to the metrics log, or to telemetry, and show it to callbacks."""
        if not self.is_writer:
            return
        log = self.telemetry if telemetry else self.metrics
        added = log.add(event, self.step if step is None else step, **values)
        for callback in self.callbacks:
            callback.on_record(self, added)

    def flush_train_losses(self) -> None:
        """Collective: one train record per step since the last flush, loss averaged over ranks."""
        if not self.pending_losses:
            return
        local = torch.stack([loss for *_, loss in self.pending_losses]).tolist()
        summed = all_reduce_sum(local, self.env.device)
        for (step, lr, epoch, _), total in zip(self.pending_losses, summed, strict=True):
            loss = total / self.env.world_size
            self.record(
                "train", step=step, loss=loss, lr=lr, epoch=epoch, num_tokens=self.tokens_per_step * step
            )
        self.pending_losses = []

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

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
        self.continues_word = word_continuation_table(self.config, Path(self.inputs.tokenizer_dir))
        self.stream = TrainStream(
            len(self.train),
            self.env.rank,
            self.env.world_size,
            self.config.micro_batch_size,
            self.inputs.seed,
        )

    def _build_engine(self) -> None:
        """Build the model (same init on every rank) and its DeepSpeed engine."""
        torch.manual_seed(self.inputs.seed)
        on_gpu = self.env.device.type == "cuda"
        # The table may be wider than the tokenizer (vocab_multiple_of); token ids, masking's random
        # replacements and the range check above stay within the tokenizer's vocabulary.
        self.model_vocab_size = self.config.padded_vocab_size(self.inputs.vocab_size, on_gpu)
        model = self.objective.build_model(
            self.config.model, self.model_vocab_size, self.inputs.seq_len, self.inputs.special_ids
        )
        self.flops_per_token = model_flops_per_token(model, self.inputs.seq_len, self.inputs.target_length)
        self.num_parameters = count_parameters(model)
        use_attention(model, self.config.attention_implementation(on_gpu, self.inputs.seq_len))
        if self.config.compiles(on_gpu):
            model.compile()  # in place: the engine wraps the same module, state-dict keys unchanged
            self.objective.compile_loss()
        self.engine, self.optimizer, _ = deepspeed_setup.initialize(
            model, self.config, self.env.world_size, self.inputs.precision
        )
        seed_everything(self.inputs.seed + 1 + self.env.rank)  # dropout masks differ per rank

    def _maybe_resume(self) -> None:
        with self.env.restored_checkpoint() as directory:
            if directory is None:
                return
            self.step = deepspeed_setup.load_checkpoint(self.engine, directory / DEEPSPEED_DIR)
            state = read_loop_state(directory, self.env.rank)
            if state.step != self.step:
                raise ArtifactError(
                    f"{directory}: loop state of rank {self.env.rank} is at step {state.step}, "
                    f"the DeepSpeed checkpoint at {self.step}"
                )
            self.next_micro_batch = state.next_micro_batch
            restore_rng(state.rng, self.env.device)
            self.metrics = EventLog.load(directory / METRICS_FILE, self.step)
            self.telemetry = EventLog.load(directory / SPEED_FILE, self.step)
            self._call("on_resume", directory)
            if self.is_writer:
                logger.info("resumed pre-training from step %d (checkpoint %s)", self.step, directory)
        self.record("resume", telemetry=True, time=time.time())

    def _train_step(self) -> torch.Tensor:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; returns the mean loss.

        The loss stays a tensor so the host only waits for the device when losses are flushed.
        """
        config, inputs = self.config, self.inputs
        total = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for _ in range(config.gradient_accumulation_steps):
            index = self.next_micro_batch
            epoch, indices = self.stream.batch(index)
            # Masks derive from (seed, epoch, rank, micro-batch): reproducible, fresh every epoch.
            generator = masking_generator(inputs.seed, epoch, self.env.rank, index)
            with record_function(PHASES.data):
                batch = self.objective.prepare_batch(
                    self.train[torch.from_numpy(indices)], self._batch_context(generator, indices, "train")
                )
                batch = self._to_device(batch)
            with record_function(PHASES.forward):
                loss = self.objective.training_loss(self.objective.forward(self.engine, batch))
            with record_function(PHASES.backward):
                self.engine.backward(loss)
            with record_function(PHASES.optimizer):
                self.engine.step()
            total += loss.detach().float()
            self.next_micro_batch += 1
        return total / config.gradient_accumulation_steps

    @torch.no_grad()
    def evaluate(self, max_batches: int | None) -> None:
        """Collective: token-weighted validation loss over all ranks; MLM eval masks are fixed across evaluations."""
        config, inputs = self.config, self.inputs
        self.engine.eval()
        totals: dict[str, float] = {}
        batches = eval_batches(
            len(self.validation), self.env.rank, self.env.world_size, config.micro_batch_size, max_batches
        )
        for batch_index, indices in enumerate(batches):
            padding = torch.from_numpy(indices < 0)
            generator = masking_generator(inputs.seed, EVAL_STREAM, self.env.rank, batch_index)
            rows = indices.clip(min=0)
            batch = self.objective.prepare_batch(
                self.validation[torch.from_numpy(rows)], self._batch_context(generator, rows, "validation")
            )
            for key in ("labels", "pair_labels"):  # padding rows only keep ZeRO-3 ranks in step
                if key in batch:
                    batch[key][padding] = IGNORE_INDEX
            sums: Sums = self.objective.forward(self.engine, self._to_device(batch))
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        keys = sorted(totals)
        reduced = dict(zip(keys, all_reduce_sum([totals[key] for key in keys], self.env.device), strict=True))
        self.engine.train()
        count = max(reduced["count"], 1.0)
        val_loss = reduced["loss_sum"] / count
        values: dict[str, Any] = {
            "val_loss": val_loss,
            "val_accuracy": reduced["correct"] / count,
            "num_eval_tokens": int(reduced["count"]),
        }
        if self.objective.packing == "clm":
            values["val_perplexity"] = math.exp(val_loss)
        if "pair_count" in reduced:
            pairs = max(reduced["pair_count"], 1.0)
            values.update(
                val_pair_loss=reduced["pair_loss_sum"] / pairs,
                val_pair_accuracy=reduced["pair_correct"] / pairs,
            )
        self.record("eval", **values)

    def _batch_context(self, generator: torch.Generator, rows: Any, split: str) -> BatchContext:
        return BatchContext(
            special_ids=self.inputs.special_ids,
            vocab_size=self.inputs.vocab_size,
            config=self.config,
            generator=generator,
            seed=self.inputs.seed,
            sequence_indices=rows,
            split=split,
            sentinel_ids=self.inputs.sentinel_ids,
            continues_word=self.continues_word,
        )

    def save(self, final: bool) -> None:
        """Collective: every rank saves its state into its own folder and reports it (a Ray barrier)."""
        self.flush_train_losses()
        with tempfile.TemporaryDirectory(prefix="lmforge-ckpt-") as tmp:
            directory = Path(tmp)
            deepspeed_setup.save_checkpoint(self.engine, directory / DEEPSPEED_DIR, self.step)
            state = LoopState(self.step, self.next_micro_batch, capture_rng(self.env.device))
            write_loop_state(directory, self.env.rank, state)
            self._call("on_save", directory, final)
            if self.is_writer:
                self.metrics.write(directory / METRICS_FILE)
                self.telemetry.write(directory / SPEED_FILE)
                if final:
                    (directory / SUMMARY_FILE).write_text(json.dumps(self.summary(), indent=2) + "\n")
            self.env.report({"step": self.step, "final": final}, directory)

    def summary(self) -> dict[str, Any]:
        """The run summary pretrain() returns (writer rank)."""
        summary = run_summary(
            self.metrics, self.telemetry, clm=self.objective.packing == "clm", curve_step=self.is_log_step
        )
        summary.update(precision=self.inputs.precision, precision_reason=self.inputs.precision_reason)
        return summary

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.env.device, non_blocking=True) for key, value in batch.items()}
