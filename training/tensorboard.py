"""TensorBoard event files (tensorboardX) for the writer rank's train, eval and speed records."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.core.logs import get_logger
from lmforge.training.artifact import TENSORBOARD_DIR
from lmforge.training.hooks import LOGGERS, Callback

if TYPE_CHECKING:
    from lmforge.training.inputs import LoopInputs
    from lmforge.training.loop import PretrainLoop

log = get_logger(__name__)

# Records plotted as scalars, tagged "<event>/<key>": train loss and lr, val loss, tokens/s and MFU.
SCALAR_EVENTS = ("train", "eval", "speed")


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Callback):
    """Writes to `inputs.tensorboard_dir` (watch it live) or a temporary folder; every checkpoint
    carries a copy under telemetry/tensorboard, which a resumed run continues from.

    tensorboardX's `flush()` does not drain its writer thread's queue, so each checkpoint closes the
    writer (which does) and the next record opens a new event file.
    """

    def __init__(self, inputs: LoopInputs) -> None:
        self.requested_dir = inputs.tensorboard_dir
        self.log_dir: Path | None = None
        self.writer: Any = None

    def _open_dir(self) -> Path:
        if self.log_dir is None:
            if self.requested_dir:
                self.log_dir = Path(self.requested_dir)
                self.log_dir.mkdir(parents=True, exist_ok=True)
            else:
                self.log_dir = Path(tempfile.mkdtemp(prefix="lmforge-tensorboard-"))
                log.info("TensorBoard event files (this node, live): %s", self.log_dir)
        return self.log_dir

    def on_resume(self, loop: PretrainLoop, directory: Path) -> None:
        saved = directory / TENSORBOARD_DIR
        if not loop.is_writer or not saved.is_dir():
            return
        # The failed attempt may have logged steps past the checkpoint: start from the saved files.
        log_dir = self._open_dir()
        shutil.rmtree(log_dir)
        shutil.copytree(saved, log_dir)

    def on_record(self, loop: PretrainLoop, record: dict[str, Any]) -> None:
        if record["event"] not in SCALAR_EVENTS:
            return
        if self.writer is None:
            from tensorboardX import SummaryWriter

            # One file per segment between checkpoints; the suffix keeps names unique within a second.
            suffix = f".step{record['step']:08d}"
            self.writer = SummaryWriter(str(self._open_dir()), flush_secs=30, filename_suffix=suffix)
        for key, value in record.items():
            if key not in ("event", "step") and _is_scalar(value):
                self.writer.add_scalar(f"{record['event']}/{key}", value, record["step"])

    def on_save(self, loop: PretrainLoop, directory: Path, final: bool) -> None:
        self._close()
        if loop.is_writer and self.log_dir is not None:
            shutil.copytree(self.log_dir, directory / TENSORBOARD_DIR, dirs_exist_ok=True)

    def on_train_end(self, loop: PretrainLoop) -> None:
        self._close()
        if self.log_dir is not None and not self.requested_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
