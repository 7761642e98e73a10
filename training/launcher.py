"""Every Ray Train detail: the TorchTrainer, the worker entry point, checkpoints in and out."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.core.logs import ROOT_LOGGER, get_logger
from lmforge.infra.progress import ProgressTarget
from lmforge.training.artifact import OUTPUT_ITEMS, SUMMARY_FILE
from lmforge.training.config import PretrainConfig
from lmforge.training.inputs import LoopInputs, StoreInputs, choose_precision, resolve_inputs
from lmforge.training.precision import DeviceProbe, DeviceProber, ResolvedPrecision, probe_device
from lmforge.training.work_area import TrainingError, WorkArea, failure_message

if TYPE_CHECKING:
    import pyarrow.fs

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
    work_dir: Path | str | None = None,
    precision: ResolvedPrecision | None = None,
    progress: ProgressTarget | None = None,
    storage_filesystem: pyarrow.fs.FileSystem | None = None,
    source: StoreInputs | None = None,
) -> dict[str, Any]:
    """Pre-train with DeepSpeed on `config.num_workers` Ray Train workers; see docs/architecture.md.

    Writes the artifact laid out in `training/artifact.py` (hf/, deepspeed/, loop_state/,
    metrics.jsonl, telemetry/) and returns the run summary. Ray Train's run folder (periodic
    checkpoints, live TensorBoard files) lives in `work_dir`, default `output_dir/../ray_train`, and
    is deleted after success; a re-run with the same `work_dir` resumes from its last checkpoint (the
    flow passes a directory keyed by the stage's recipe). With `storage_filesystem` (a shared store
    every node reaches), `work_dir` is a path on it and TensorBoard files are written node-locally
    until each checkpoint copies them. `precision`: as `worker_precision` resolved it (default:
    resolved here). `progress`: where rank 0 reports steps done. `source`: the shards and tokenizer
    as object-store artifacts, which each worker fetches on its own node (`shards_dir` and
    `tokenizer_dir` are then the driver's copies, read here only).

    Raises `TrainingError` once `max_failures` is spent; the work area then keeps the last checkpoint.
    """
    from ray.train import TrainingFailedError

    from lmforge.infra.ray_runtime import ensure_ray

    output_dir = Path(output_dir).resolve()
    ensure_ray()
    use_gpu = workers_use_gpu(config)
    resources = worker_resources(config, use_gpu)
    area = WorkArea.of(work_dir, output_dir, RAY_RUN_NAME, storage_filesystem)
    inputs = resolve_inputs(
        config,
        Path(shards_dir),
        Path(tokenizer_dir),
        seed,
        probe=worker_prober(config, use_gpu),
        tensorboard_dir=area.live_tensorboard_dir(),
        precision=precision,
    )
    inputs = dataclasses.replace(inputs, progress=progress, source=source)
    # Cache DeepSpeed's JIT-built ops (the CPU shm comm op takes 20-40 s to compile).
    os.environ.setdefault(EXTENSIONS_ENV, str(DEFAULT_EXTENSIONS_DIR))
    trainer = _build_trainer(config, inputs, use_gpu, resources, area)
    log.info(
        "pre-training %s (%s) on %d %s worker(s) (%s, %s) in %s, run %s",
        config.objective,
        config.model.size,
        config.num_workers,
        "GPU" if use_gpu else "CPU",
        resources,
        config.placement_strategy,
        inputs.precision,
        area.describe(),
    )
    try:
        result = fit_off_main_thread(trainer)
    except TrainingFailedError as err:
        # The work area stays: its last checkpoint is where a re-run resumes.
        raise TrainingError(failure_message(err, config.max_failures, area)) from err
    if result.checkpoint is None:
        raise ArtifactError(f"Ray Train run {area.describe()} finished without a final checkpoint")
    with result.checkpoint.as_directory() as final:
        summary = _materialize(Path(final), output_dir)
    area.delete_run()
    return summary


def worker_resources(config: PretrainConfig, use_gpu: bool) -> dict[str, float]:
    """Each worker's Ray resources for the resolved `use_gpu`; ConfigError when they contradict it."""
    try:
        return config.worker_resources(use_gpu)
    except ValueError as err:
        raise ConfigError(f"pretrain.{err}") from None


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


def workers_use_gpu(config: PretrainConfig) -> bool:
    """Whether the workers train on GPU (`use_gpu` "auto" resolved for the cluster).

    A local runtime not started yet would count the GPUs CUDA shows this process, so that is read
    here without starting Ray (a fully reused run needs no Ray).
    """
    from lmforge.infra.ray_runtime import cuda_available_on_cluster, ensure_ray, local_runtime_pending

    if config.use_gpu != "auto":
        return bool(config.use_gpu)
    if local_runtime_pending():
        return torch.cuda.is_available()
    ensure_ray()
    return cuda_available_on_cluster()


def worker_precision(config: PretrainConfig) -> ResolvedPrecision:
    """The precision `config` trains in on the cluster's workers ("auto" resolved for their device).

    Before a local runtime has started, CPU workers are probed in this process: they would run on
    this machine with this environment (CPU flags, oneDNN cap), which is all the choice reads, so a
    fully reused run resolves the same precision (the pre-training recipe holds it) without starting Ray.
    """
    from lmforge.infra.ray_runtime import local_runtime_pending

    use_gpu = workers_use_gpu(config)
    in_process = not use_gpu and local_runtime_pending()
    return choose_precision(config, worker_prober(config, use_gpu, in_process=in_process))


def worker_prober(config: PretrainConfig, use_gpu: bool, in_process: bool = False) -> DeviceProber:
    """Probe the device as a Ray task with one worker's resources, i.e. where the workers will run
    (`in_process`: here, for workers of a local runtime not started yet)."""
    from lmforge.infra.ray_runtime import run_remote

    resources = worker_resources(config, use_gpu)  # also checks them against use_gpu

    def probe(measure_bf16: bool) -> DeviceProbe:
        if in_process:
            return probe_device("cuda" if use_gpu else "cpu", measure_bf16)
        return run_remote(
            probe_device,
            "cuda" if use_gpu else "cpu",
            measure_bf16,
            num_cpus=resources["CPU"],
            num_gpus=resources.get("GPU", 0),
        )

    return probe


def process_group_backend(use_gpu: bool) -> str:
    """torch.distributed backend of the workers' process group (DeepSpeed reuses that group)."""
    return "nccl" if use_gpu else "gloo"


def _build_trainer(
    config: PretrainConfig, inputs: LoopInputs, use_gpu: bool, resources: dict[str, float], area: WorkArea
):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config={
            "inputs": inputs,
            "use_gpu": use_gpu,
            "extensions_dir": os.environ[EXTENSIONS_ENV],
        },
        torch_config=TorchConfig(backend=process_group_backend(use_gpu)),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.placement_strategy,
        ),
        run_config=RunConfig(
            name=area.run_name,
            storage_path=area.storage_path,
            storage_filesystem=area.filesystem,
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
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        self.node_id: str | None = ray.get_runtime_context().get_node_id()

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        import pyarrow.fs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            yield Path(checkpoint.path)
            return
        # Not Checkpoint.as_directory(): it gives every worker of a node one shared download folder,
        # and a worker that takes the folder's lock after another finished downloads again over the
        # files that one is reading (a truncated DeepSpeed file on resume). One folder per worker.
        with tempfile.TemporaryDirectory(prefix=f"lmforge-restore-rank{self.rank}-") as folder:
            yield Path(checkpoint.to_directory(folder))

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
    torch.set_num_threads(inputs.config.threads_per_worker)
    _log_to_stderr()
    if inputs.source is not None:
        shards_dir, tokenizer_dir = inputs.source.fetch()
        inputs = dataclasses.replace(inputs, shards_dir=shards_dir, tokenizer_dir=tokenizer_dir)
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
