"""The callback protocol of the pre-training loop, and the registry of metric sinks (loggers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.core.registry import Registry

if TYPE_CHECKING:
    from lmforge.training.inputs import LoopInputs
    from lmforge.training.loop import PretrainLoop


class Callback:
    """Hooks the loop calls on every rank, in list order; a subclass overrides the ones it needs.

    Collectives (evaluation, checkpoints, gathers) are allowed in every hook except `on_record`:
    all ranks call the same hooks at the same steps. `on_record` runs on the writer rank only.
    """

    def on_resume(self, loop: PretrainLoop, directory: Path) -> None:
        """Restore this callback's state from a checkpoint folder (before `on_start`)."""

    def on_start(self, loop: PretrainLoop) -> None:
        """After the engine is built and any checkpoint restored, before the first step."""

    def on_step_start(self, loop: PretrainLoop) -> None:
        """Before optimizer step `loop.step + 1`."""

    def on_step_end(self, loop: PretrainLoop) -> None:
        """After optimizer step `loop.step` (already incremented)."""

    def on_record(self, loop: PretrainLoop, record: dict[str, Any]) -> None:
        """A metrics or telemetry record was added (writer rank only; no collectives)."""

    def on_save(self, loop: PretrainLoop, directory: Path, final: bool) -> None:
        """Add this callback's files to a checkpoint folder before it is reported."""

    def on_train_end(self, loop: PretrainLoop) -> None:
        """After the final checkpoint was reported."""


# Metric sinks selected by name in `pretrain.loggers`: Callback classes built from the loop inputs.
LOGGERS: Registry[Callable[[LoopInputs], Callback]] = Registry("logger")
