"""Ray Train's work area on local disk or a pyarrow filesystem: last checkpoint, removal, failure text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.core.errors import ArtifactError
from lmforge.training.work_area import SNAPSHOT_FILE, WorkArea, failure_message

pytestmark = pytest.mark.unit


@pytest.fixture
def object_store(tmp_path):
    """A filesystem rooted in tmp_path/root, reached only through pyarrow (like an object store)."""
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem, SubTreeFileSystem

    root = tmp_path / "root"
    root.mkdir()
    return root, SubTreeFileSystem(str(root), PyFileSystem(FSSpecHandler(fsspec.filesystem("file"))))


def write_snapshot(run_dir: Path, step: int | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = {"checkpoint_dir_name": f"checkpoint_{step}", "metrics": {"step": step}} if step else None
    (run_dir / SNAPSHOT_FILE).write_text(json.dumps({"latest_checkpoint_result": latest}))


def test_local_area_defaults_beside_the_output(tmp_path):
    area = WorkArea.of(None, tmp_path / "out", "pretrain")
    assert area.is_local and area.run_path == str(tmp_path / "ray_train" / "pretrain")
    assert area.live_tensorboard_dir() == tmp_path / "ray_train" / "pretrain" / "tensorboard"
    assert area.last_checkpoint() is None
    write_snapshot(tmp_path / "ray_train" / "pretrain", 10)
    assert area.last_checkpoint() == (10, str(tmp_path / "ray_train" / "pretrain" / "checkpoint_10"))
    area.delete_run()
    assert not (tmp_path / "ray_train" / "pretrain").exists()
    area.delete_run()  # nothing left: no error


def test_area_on_a_filesystem_reads_and_deletes_through_it(object_store, tmp_path):
    root, fs = object_store
    area = WorkArea.of("work/key/", tmp_path / "out", "pretrain", fs)
    assert not area.is_local and area.run_path == "work/key/pretrain"
    assert area.live_tensorboard_dir() is None  # node-local temporary folder on the workers
    write_snapshot(root / "work" / "key" / "pretrain", None)
    assert area.last_checkpoint() is None  # snapshot written before any checkpoint registered
    write_snapshot(root / "work" / "key" / "pretrain", 20)
    (root / "work" / "key" / "pretrain" / "checkpoint_20").mkdir()
    assert area.last_checkpoint() == (20, "work/key/pretrain/checkpoint_20")
    area.delete_run()
    assert not (root / "work" / "key" / "pretrain").exists() and (root / "work" / "key").is_dir()
    with pytest.raises(ArtifactError, match="storage_filesystem needs work_dir"):
        WorkArea.of(None, tmp_path / "out", "pretrain", fs)


def test_failure_message_counts_failures_and_names_the_kept_checkpoint(object_store, tmp_path):
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    root, fs = object_store
    area = WorkArea.of("work", tmp_path / "out", "pretrain", fs)
    # What a SIGKILLed rank 1 looks like: its health check failed; rank 0 lost its peer.
    lost = WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError())
    error = WorkerGroupError(
        "worker 1 died", {0: RuntimeError("Connection closed by peer\n  more detail"), 1: lost}
    )
    message = failure_message(error, max_failures=2, area=area)
    assert "\n" not in message
    assert message.startswith("pre-training failed after 3 worker-group failure(s) (max_failures 2)")
    assert (
        "last error: rank 1: WorkerHealthCheckFailedError: A worker health check failed. (ActorDiedError: "
        in message
    )
    assert "; rank 0: RuntimeError: Connection closed by peer; " in message
    assert "no checkpoint was registered in work/pretrain on " in message

    write_snapshot(root / "work" / "pretrain", 15)
    message = failure_message(error, max_failures=2, area=area)
    assert "the last checkpoint (step 15, work/pretrain/checkpoint_15 on " in message
    assert message.endswith("a re-run with the same work_dir resumes from it")
