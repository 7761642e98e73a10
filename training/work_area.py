"""Ray Train's work area: where the run folder (checkpoints, snapshot) lives, on local disk or a shared
filesystem, what it holds after a failure, and its removal after success."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.core.errors import ArtifactError
from lmforge.core.logs import get_logger

if TYPE_CHECKING:
    import pyarrow.fs

log = get_logger(__name__)

# Ray Train's record of the reported checkpoints, in the run folder (ray/train/v2/_internal/constants.py).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


class TrainingError(ArtifactError):
    """Pre-training failed for good (the failure budget is spent); the work area is kept for a resume."""


@dataclass(frozen=True)
class WorkArea:
    """`storage_path` on `filesystem` (None: local disk), holding Ray Train's run folder `run_name`."""

    storage_path: str
    run_name: str
    filesystem: pyarrow.fs.FileSystem | None = None

    @classmethod
    def of(
        cls,
        work_dir: Path | str | None,
        output_dir: Path,
        run_name: str,
        filesystem: pyarrow.fs.FileSystem | None = None,
    ) -> WorkArea:
        """A local `work_dir` (default `output_dir/../ray_train`), or a path on `filesystem` when given."""
        if filesystem is not None:
            if work_dir is None:
                raise ArtifactError(
                    "pretrain: a storage_filesystem needs work_dir, a path on that filesystem"
                )
            return cls(str(work_dir).rstrip("/"), run_name, filesystem)
        return cls(str(Path(work_dir or output_dir.parent / "ray_train").resolve()), run_name)

    @property
    def is_local(self) -> bool:
        return self.filesystem is None

    @property
    def run_path(self) -> str:
        return posixpath.join(self.storage_path, self.run_name)

    def describe(self, path: str | None = None) -> str:
        """`path` (default: the run folder) as a user finds it: local, or with the filesystem's type."""
        path = path or self.run_path
        return path if self.filesystem is None else f"{path} on {self.filesystem.type_name} filesystem"

    def live_tensorboard_dir(self) -> Path | None:
        """Where rank 0 writes TensorBoard files while training: the local run folder; on a shared
        filesystem, a node-local temporary folder (None), since event files are appended to in place."""
        return Path(self.run_path) / "tensorboard" if self.is_local else None

    def _fs(self) -> pyarrow.fs.FileSystem:
        import pyarrow.fs

        return self.filesystem or pyarrow.fs.LocalFileSystem()

    def last_checkpoint(self) -> tuple[int, str] | None:
        """(step, folder) of the last checkpoint Ray Train registered in the run folder, if any."""
        import pyarrow.fs

        fs, path = self._fs(), posixpath.join(self.run_path, SNAPSHOT_FILE)
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        try:
            with fs.open_input_stream(path) as stream:
                latest = json.loads(stream.read().decode("utf-8")).get("latest_checkpoint_result")
            if not latest:
                return None
            return int(latest["metrics"]["step"]), posixpath.join(
                self.run_path, latest["checkpoint_dir_name"]
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable checkpoint record (%s)", path, err)
            return None

    def delete_run(self) -> None:
        """Remove the run folder (checkpoints and all) through its filesystem."""
        import pyarrow.fs

        fs = self._fs()
        if fs.get_file_info(self.run_path).type == pyarrow.fs.FileType.Directory:
            fs.delete_dir(self.run_path)


def failure_message(error: Any, max_failures: int, area: WorkArea) -> str:
    """One paragraph for a run Ray Train gave up on: failures seen, the last worker error, the budget,
    and the checkpoint kept for a resume."""
    worker_failures: dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
    if worker_failures:
        # Ray Train counts worker-group failures; it raises on the one past the budget.
        seen = (
            f"{max_failures + 1} worker-group failure(s)" if max_failures >= 0 else "a worker-group failure"
        )
        # Lost workers first: the survivors' errors (a peer's connection reset) follow from them.
        ranks = sorted(worker_failures, key=lambda rank: (not _is_lost_worker(worker_failures[rank]), rank))
        last = "; ".join(f"rank {rank}: {_one_line(worker_failures[rank])}" for rank in ranks)
    else:
        seen, last = "a failure outside the workers", _one_line(getattr(error, "controller_failure", error))
    checkpoint = area.last_checkpoint()
    if checkpoint is None:
        kept = f"no checkpoint was registered in {area.describe()}: a re-run starts from step 0"
    else:
        step, folder = checkpoint
        kept = (
            f"the last checkpoint (step {step}, {area.describe(folder)}) is kept in the work area: "
            "a re-run with the same work_dir resumes from it"
        )
    return f"pre-training failed after {seen} (max_failures {max_failures}); last error: {last}; {kept}"


def _is_lost_worker(error: BaseException) -> bool:
    """A worker whose process died (Ray's health check saw it), not one that raised."""
    from ray.exceptions import RayActorError

    return isinstance(error, RayActorError) or isinstance(
        getattr(error, "health_check_failure", None), RayActorError
    )


def _one_line(error: BaseException, limit: int = 240) -> str:
    """`Type: first line`, with the cause Ray Train wraps in a health-check error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    cause = getattr(error, "health_check_failure", None)
    if isinstance(cause, BaseException):
        text += f" ({_one_line(cause, limit)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
