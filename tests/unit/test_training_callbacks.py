"""The callback list built from config, a metric sink as one more callback, TensorBoard files, the model recipe."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.training import PretrainConfig
from lmforge.training.artifact import TENSORBOARD_DIR, model_recipe
from lmforge.training.callbacks import (
    LOGGERS,
    ConsoleLogger,
    Evaluation,
    HFExport,
    PeriodicCheckpoint,
    ProgressReport,
    build_callbacks,
)
from lmforge.training.hooks import Callback
from lmforge.training.inputs import LoopInputs
from lmforge.training.speed import SpeedMonitor
from lmforge.training.tensorboard import TensorBoardLogger

pytestmark = pytest.mark.unit


def loop_inputs(config: PretrainConfig, tensorboard_dir: Path | None = None) -> LoopInputs:
    return LoopInputs(
        config=config,
        shards_dir="shards",
        tokenizer_dir="tokenizer",
        seed=0,
        vocab_size=10,
        seq_len=8,
        precision="fp32",
        precision_reason="test",
        tensorboard_dir=str(tensorboard_dir) if tensorboard_dir else None,
    )


def kinds(callbacks: list[Callback]) -> list[type]:
    return [type(callback) for callback in callbacks]


def test_default_callbacks_speed_monitor_first_tensorboard_on():
    assert kinds(build_callbacks(loop_inputs(PretrainConfig()))) == [
        SpeedMonitor,
        ConsoleLogger,
        Evaluation,
        TensorBoardLogger,
        ProgressReport,
        HFExport,
    ]
    quiet = build_callbacks(loop_inputs(PretrainConfig(loggers=(), checkpoint_every=5)))
    assert kinds(quiet) == [
        SpeedMonitor,
        ConsoleLogger,
        Evaluation,
        ProgressReport,
        PeriodicCheckpoint,
        HFExport,
    ]


class MemoryLogger(Callback):
    """What a W&B or MLflow sink looks like: built from the inputs, fed every record."""

    def __init__(self, inputs: LoopInputs) -> None:
        self.records: list[dict] = []

    def on_record(self, loop, record) -> None:
        self.records.append(record)


def test_a_new_metric_sink_is_one_registered_callback(monkeypatch):
    monkeypatch.setitem(LOGGERS._entries, "memory", MemoryLogger)
    callbacks = build_callbacks(loop_inputs(PretrainConfig(loggers=("tensorboard", "memory"))))
    assert kinds(callbacks)[3:5] == [TensorBoardLogger, MemoryLogger]


def test_unknown_logger_names_the_key():
    with pytest.raises(ConfigError, match=r"loggers.*'tensorbord'.*did you mean 'tensorboard'"):
        validate_config(PretrainConfig, {"loggers": ["tensorbord"]})


def read_scalars(directory: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files under `directory`."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            scalars += [(value.tag, event.step, value.simple_value) for value in event.summary.value]
            offset += 12 + length + 4
    return scalars


def test_tensorboard_writes_train_eval_speed_scalars_and_survives_resume(tmp_path):
    loop = SimpleNamespace(is_writer=True)
    logger = TensorBoardLogger(loop_inputs(PretrainConfig(), tmp_path / "live"))
    logger.on_start(loop)
    logger.on_record(loop, {"event": "start", "step": 0, "peak_flops_per_worker": [1.0]})
    logger.on_record(loop, {"event": "train", "step": 1, "loss": 6.5, "lr": 0.25, "epoch": 0})
    logger.on_record(loop, {"event": "speed", "step": 1, "tokens_per_second": 100.0, "peak_suspect": False})
    logger.on_save(loop, tmp_path / "ckpt", final=False)
    logger.on_record(loop, {"event": "eval", "step": 2, "val_loss": 6.0})  # after the checkpoint
    logger.on_train_end(loop)
    saved = read_scalars(tmp_path / "ckpt" / TENSORBOARD_DIR)
    assert saved == [("train/loss", 1, 6.5), ("train/lr", 1, 0.25), ("train/epoch", 1, 0.0),
                     ("speed/tokens_per_second", 1, 100.0)]  # fmt: skip
    assert ("eval/val_loss", 2, 6.0) in read_scalars(tmp_path / "live")

    # A resumed run starts from the checkpoint's files: the lost attempt's step 2 is gone.
    resumed = TensorBoardLogger(loop_inputs(PretrainConfig(), tmp_path / "live"))
    resumed.on_resume(loop, tmp_path / "ckpt")
    assert read_scalars(tmp_path / "live") == saved


def test_model_recipe_keeps_what_shapes_the_weights():
    config = PretrainConfig(
        objective="clm", log_every=3, checkpoint_every=7, max_failures=2, cpus_per_worker=2
    )
    recipe = model_recipe(config, "bf16")
    assert recipe["precision"] == "bf16" and recipe["learning_rate"] == config.learning_rate
    assert recipe["model"]["size"] == "debug" and recipe["max_steps"] == config.max_steps
    operational = {"log_every", "checkpoint_every", "max_failures", "cpus_per_worker", "loggers"}
    assert not operational & set(recipe) and "masking" not in recipe
    assert recipe == model_recipe(PretrainConfig(objective="clm"), "bf16")
    assert "masking" in model_recipe(PretrainConfig(objective="mlm"), "fp32")
