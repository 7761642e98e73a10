"""Every Ray Train detail: the TorchTrainer, the worker entry point, checkpoints in and out."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmforge.core.errors import ArtifactError
from lmforge.core.logs import ROOT_LOGGER, get_logger
from lmforge.infra.progress import ProgressTarget
from lmforge.training.artifact import OUTPUT_ITEMS, SUMMARY_FILE
from lmforge.training.config import PretrainConfig
from lmforge.training.inputs import LoopInputs, choose_precision, resolve_inputs
from lmforge.training.precision import DeviceProbe, DeviceProber, ResolvedPrecision, probe_device

log = get_logger(__name__)
# Ray Train's run folder inside `work_dir`: a fixed name, so a re-run of the same recipe (whose lock
# owns `work_dir`) finds the crashed attempt's checkpoints and resumes from them.
RAY_RUN_NAME = "pretrain"

EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"
DEFAULT_EXTENSIONS_DIR = Path("~/.cache/lmforge/torch_extensions").expanduser()


def pretrain(
    config: PretrainConfig,
    shards_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    seed: int,
    work_dir: Path | None = None,
    precision: ResolvedPrecision | None = None,
    progress: ProgressTarget | None = None,
) -> dict[str, Any]:
    """Pre-train with DeepSpeed on `config.num_workers` Ray Train workers; see docs/architecture.md.

    Writes the artifact laid out in `training/artifact.py` (hf/, deepspeed/, loop_state/,
    metrics.jsonl, telemetry/) and returns the run summary. Ray Train's run folder (periodic
    checkpoints, live TensorBoard files) lives in `work_dir`, default `output_dir/../ray_train`, and
    is deleted after success; a re-run with the same `work_dir` resumes from its last checkpoint (the
    flow passes a directory keyed by the stage's recipe). `precision`: as `worker_precision` resolved
    it (default: resolved here). `progress`: where rank 0 reports steps done.
    """
    from lmforge.infra.ray_runtime import cuda_available_on_cluster, ensure_ray

    output_dir = Path(output_dir).resolve()
    ensure_ray()
    use_gpu = cuda_available_on_cluster() if config.use_gpu == "auto" else bool(config.use_gpu)
    storage = Path(work_dir or output_dir.parent / "ray_train").resolve()
    run_name = RAY_RUN_NAME
    inputs = resolve_inputs(
        config,
        Path(shards_dir),
        Path(tokenizer_dir),
        seed,
        probe=worker_prober(config, use_gpu),
        tensorboard_dir=storage / run_name / "tensorboard",
        precision=precision,
    )
    inputs = dataclasses.replace(inputs, progress=progress)
    # Cache DeepSpeed's JIT-built ops (the CPU shm comm op takes 20-40 s to compile).
    os.environ.setdefault(EXTENSIONS_ENV, str(DEFAULT_EXTENSIONS_DIR))
    trainer = _build_trainer(config, inputs, use_gpu, storage, run_name)
    log.info(
        "pre-training %s (%s) on %d %s worker(s) in %s, run %s",
        config.objective,
        config.model.size,
        config.num_workers,
        "GPU" if use_gpu else "CPU",
        inputs.precision,
        storage / run_name,
    )
    result = fit_off_main_thread(trainer)
    if result.checkpoint is None:
        raise ArtifactError(f"Ray Train run {storage / run_name} finished without a final checkpoint")
    with result.checkpoint.as_directory() as final:
        summary = _materialize(Path(final), output_dir)
    shutil.rmtree(storage / run_name, ignore_errors=True)
    return summary


def fit_off_main_thread(trainer: Any) -> Any:
    """`trainer.fit()` in a helper thread, the caller waiting.

    On the main thread Ray Train installs its own SIGINT handler (and keeps it): Ctrl-C would end as
    SystemExit instead of KeyboardInterrupt. Here a Ctrl-C (or the SIGTERM of a cancel) stays in the
    caller, which stops the run's Ray work; the helper thread then fails with it.
    """
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="lmforge-ray-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def worker_precision(config: PretrainConfig) -> ResolvedPrecision:
    """The precision `config` trains in on the cluster's workers ("auto" resolved for their device)."""
    from lmforge.infra.ray_runtime import cuda_available_on_cluster, ensure_ray

    ensure_ray()
    use_gpu = cuda_available_on_cluster() if config.use_gpu == "auto" else bool(config.use_gpu)
    return choose_precision(config, worker_prober(config, use_gpu))


def worker_prober(config: PretrainConfig, use_gpu: bool) -> DeviceProber:
    """Probe the device as a Ray task with one worker's resources, i.e. where the workers will run."""
    from lmforge.infra.ray_runtime import run_remote

    def probe(measure_bf16: bool) -> DeviceProbe:
        return run_remote(
            probe_device,
            "cuda" if use_gpu else "cpu",
            measure_bf16,
            num_cpus=config.cpus_per_worker,
            num_gpus=1 if use_gpu else 0,
        )

    return probe


def _build_trainer(config: PretrainConfig, inputs: LoopInputs, use_gpu: bool, storage: Path, run_name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources: dict[str, float] = {"CPU": config.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "inputs": inputs,
            "use_gpu": use_gpu,
            "extensions_dir": os.environ[EXTENSIONS_ENV],
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def _materialize(final: Path, output_dir: Path) -> dict[str, Any]:
    """Copy the final Ray checkpoint's artifacts into `output_dir`; returns the run summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for item in OUTPUT_ITEMS:
        source = final / item
        if not source.exists():
            raise ArtifactError(f"final checkpoint {final} lacks {item}")
        if source.is_dir():
            shutil.copytree(source, output_dir / item, dirs_exist_ok=True)
        else:
            shutil.copy2(source, output_dir / item)
    return json.loads((final / SUMMARY_FILE).read_text())


class RayWorkerEnv:
    """The loop's view of a Ray Train worker: rank, device, checkpoint in, report out."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point (runs in every worker process)."""
    use_gpu = loop_config["use_gpu"]
    inputs: LoopInputs = loop_config["inputs"]
    os.environ.setdefault(EXTENSIONS_ENV, loop_config["extensions_dir"])
    # Pin DeepSpeed's accelerator before it is imported: it otherwise guesses from what is installed.
    os.environ["DS_ACCELERATOR"] = "cuda" if use_gpu else "cpu"
    env = RayWorkerEnv(use_gpu)
    # DeepSpeed reads these; Ray Train's process group is already up, so they only describe it.
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    torch.set_num_threads(inputs.config.cpus_per_worker)
    _log_to_stderr()
    from lmforge.training.loop import PretrainLoop

    PretrainLoop(inputs, env).run()


def _log_to_stderr() -> None:
    """Show our INFO records from workers; Ray Train usually installs a root handler already."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
