"""The loop's standard callbacks, and `build_callbacks`: the one place the callback list comes from config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressReporter
from lmforge.training import deepspeed_setup
from lmforge.training.artifact import HF_DIR, model_recipe
from lmforge.training.hooks import LOGGERS, Callback
from lmforge.training.profiling import StepProfiler
from lmforge.training.speed import PEAK_SECONDS, SpeedMonitor
from lmforge.training.tensorboard import TensorBoardLogger

if TYPE_CHECKING:
    from lmforge.training.inputs import LoopInputs
    from lmforge.training.loop import PretrainLoop
    from lmforge.training.objectives import Objective

__all__ = ["LOGGERS", "Callback", "TensorBoardLogger", "build_callbacks"]

log = get_logger(__name__)


class ConsoleLogger(Callback):
    """One log line per record; per-step train records only at log steps."""

    def on_record(self, loop: PretrainLoop, record: dict[str, Any]) -> None:
        if record["event"] == "train" and not loop.is_log_step(record["step"]):
            return
        shown = " ".join(f"{key}={_short(value)}" for key, value in record.items() if key != "event")
        log.info("%s %s", record["event"], shown)


class ProgressReport(Callback):
    """Steps done, train loss and tokens/s to the run's progress board (writer rank; no collectives)."""

    def __init__(self) -> None:
        self.reporter: ProgressReporter | None = None
        self.metrics: dict[str, float] = {}

    def on_start(self, loop: PretrainLoop) -> None:
        if not loop.is_writer or loop.inputs.progress is None:
            return
        self.reporter = ProgressReporter(loop.inputs.progress, loop.config.max_steps, start_done=loop.step)
        if loop.step:
            self.reporter.note(f"resumed pre-training from step {loop.step} (last checkpoint)")

    def on_record(self, loop: PretrainLoop, record: dict[str, Any]) -> None:
        if record["event"] == "train":
            self.metrics["loss"] = record["loss"]
        elif record["event"] == "speed":
            self.metrics["tokens_per_s"] = record["tokens_per_second"]

    def on_step_end(self, loop: PretrainLoop) -> None:
        if self.reporter is not None:
            self.reporter.update(loop.step, **self.metrics)


class Evaluation(Callback):
    """Validation loss every `eval_every` steps; the last step scores the whole split (the reported loss)."""

    def __init__(self, eval_every: int, eval_batches: int | None) -> None:
        self.eval_every, self.eval_batches = eval_every, eval_batches

    def on_step_end(self, loop: PretrainLoop) -> None:
        if loop.step == loop.config.max_steps:
            loop.evaluate(None)
        elif loop.step % self.eval_every == 0:
            loop.evaluate(self.eval_batches)


class PeriodicCheckpoint(Callback):
    """A resumable checkpoint every `every` steps (the loop itself saves the final one)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, loop: PretrainLoop) -> None:
        if loop.step % self.every == 0 and loop.step < loop.config.max_steps:
            loop.save(final=False)


class HFExport(Callback):
    """The final checkpoint's `hf/`: a save_pretrained model, the tokenizer, and what shaped the weights."""

    def on_save(self, loop: PretrainLoop, directory: Path, final: bool) -> None:
        if not final:
            return
        inputs = loop.inputs
        metadata = {
            "objective": loop.config.objective,
            "auto_model_class": loop.objective.auto_model_class,
            "seq_len": inputs.seq_len,
            "seed": inputs.seed,
            "steps": loop.step,
            "special_ids": inputs.special_ids,
            "pretrain_config": model_recipe(loop.config, inputs.precision),
        }
        deepspeed_setup.export_hf(
            loop.engine,
            loop.config.zero_stage,
            Path(inputs.tokenizer_dir),
            directory / HF_DIR,
            loop.is_writer,
            metadata,
        )
        if loop.is_writer:
            set_export_template(directory / HF_DIR, loop.objective, inputs.special_ids)


def set_export_template(hf_dir: Path, objective: Objective, special_ids: dict[str, int]) -> None:
    """Make the exported tokenizer add the special tokens `objective` trained with (a Unigram
    tokenizer shared by a lab's branches appends </s> T5's way; a masked LM wants <s> ... </s>).

    A causal LM gets no template-added tokens; a tokenizer's own non-template post-processor (byte-level
    BPE's offsets) is kept."""
    from tokenizers import Tokenizer, processors

    path = hf_dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokens = {role: str(tokenizer.id_to_token(token_id)) for role, token_id in special_ids.items()}
    template = objective.export_template(tokens)
    if template is None:
        if not isinstance(tokenizer.post_processor, processors.TemplateProcessing):
            return
        tokenizer.post_processor = None
    else:
        used = sorted({token for token in template[1].replace(":1", "").split() if not token.startswith("$")})
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template[0],
            pair=template[1],
            special_tokens=[(token, tokenizer.token_to_id(token)) for token in used],
        )
    tokenizer.save(str(path))


def build_callbacks(inputs: LoopInputs, peak_seconds: float = PEAK_SECONDS) -> list[Callback]:
    """The loop's callbacks from `inputs.config`, in call order (the speed monitor first)."""
    config = inputs.config
    callbacks: list[Callback] = [SpeedMonitor(peak_seconds)]
    if config.profile is not None:
        callbacks.append(StepProfiler(config.profile))
    callbacks += [
        ConsoleLogger(),
        Evaluation(config.eval_every, config.eval_batches),
    ]
    callbacks += [LOGGERS.get(name)(inputs) for name in config.loggers]
    callbacks.append(ProgressReport())
    if config.checkpoint_every:
        callbacks.append(PeriodicCheckpoint(config.checkpoint_every))
    callbacks.append(HFExport())
    return callbacks


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
