"""`lmforge submit` against a real 2-node Ray cluster on this machine (tests/cluster.py)."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest

from lmforge.app.cli import main
from tests.cluster import local_cluster

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
# Small enough for 1 CPU per node: a few hundred documents, a small vocabulary.
SMALL = ["--set", "corpus.max_documents=300", "--set", "tokenizer.vocab_size=512"]


@pytest.fixture(scope="module")
def cluster():
    start = time.monotonic()
    with local_cluster(num_nodes=2, num_cpus=1) as running:
        print(f"2-node cluster up in {time.monotonic() - start:.1f} s at {running.dashboard_url}")
        yield running
        start = time.monotonic()
    print(f"2-node cluster stopped in {time.monotonic() - start:.1f} s")


def submitted_id(output: str) -> str:
    match = re.search(r"submitted Ray job (\S+) to ", output)
    assert match, output
    return match.group(1)


def test_submit_stage_shard_waits_and_jobs_commands_show_it(
    cluster, shared_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the job starts its own Prefect server
    store = tmp_path / "store"
    address = ["--address", cluster.dashboard_url]
    start = time.monotonic()
    code = main(
        [
            "submit",
            str(REPO_ROOT / "configs" / "tiny.yaml"),
            *SMALL,
            "--stage",
            "shard",
            "--store",
            str(store),
            "--wait",
            *address,
        ]
    )
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nsubmit --stage shard --wait: {time.monotonic() - start:.1f} s from submit to the job's end")
    job_id = submitted_id(out)
    assert code == 0, out[-6000:]
    assert f"job {job_id}: SUCCEEDED" in out

    run_id = job_id.removeprefix("lmforge-")
    record = json.loads((store / "runs" / run_id / "run.json").read_text())
    assert record["status"] == "completed"
    assert set(record["stages"]) == {"clean", "tokenizer", "shard"}
    assert record["stage"] == "shard"
    assert record["skipped_stages"] == ["pretrain", "finetune", "eval", "report"]
    assert record["report"] is None
    assert record["config"]["corpus"]["max_documents"] == 300

    assert main(["jobs", "status", job_id, *address]) == 0
    assert f"job {job_id}: SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, *address]) == 0
    logs = capsys.readouterr().out
    assert f"run {run_id} completed" in logs and "--stage shard: skipped pretrain" in logs
    assert main(["jobs", "list", *address]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"^{re.escape(job_id)}\s+SUCCEEDED\s", listed, re.MULTILINE), listed
    assert main(["jobs", "stop", job_id, *address]) == 0
    assert "not running" in capsys.readouterr().out


def test_failed_job_makes_wait_exit_1(cluster, shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    # The store path resolves here but cannot be created on the cluster: the job's `lmforge run` fails.
    store = "/proc/lmforge-store"
    code = main(
        ["submit", str(REPO_ROOT / "configs" / "tiny.yaml"), "--stage", "clean", "--store", store, "--wait"]
        + ["--address", cluster.dashboard_url]
    )
    out = capsys.readouterr().out
    assert code == 1, out[-4000:]
    assert re.search(rf"job {re.escape(submitted_id(out))}: FAILED", out), out[-4000:]


PROBE = textwrap.dedent(
    """
    import json, os, sys
    import ray, ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    OUT = sys.argv[1]

    def where(label):
        import lmforge
        record = {"file": lmforge.__file__, "node": ray.get_runtime_context().get_node_id()}
        with open(os.path.join(OUT, label + ".json"), "w") as f:
            json.dump(record, f)

    def train_fn():
        where("rank%d" % ray.train.get_context().get_world_rank())

    ray.init()
    where("driver")
    ray.get(ray.remote(num_cpus=1)(where).remote("task"))
    TorchTrainer(
        train_fn,
        scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD"),
        run_config=ray.train.RunConfig(storage_path=os.path.join(OUT, "train")),
    ).fit()
    """
)


def test_job_driver_tasks_and_train_workers_import_lmforge_from_the_working_dir(cluster, tmp_path):
    """The staged working_dir, not this checkout (installed editable here), is what every process of
    the job imports: the driver, a task, and Ray Train workers on both nodes."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from lmforge.app.submit import stage_working_dir

    staging, out = tmp_path / "staging", tmp_path / "out"
    out.mkdir()
    stage_working_dir({"name": "probe"}, staging)
    (staging / "probe.py").write_text(PROBE)
    client = JobSubmissionClient(cluster.dashboard_url)
    job_id = client.submit_job(
        entrypoint=f"python probe.py {out}",
        runtime_env={
            "working_dir": str(staging),
            "env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"},
        },
    )
    deadline = time.monotonic() + 300
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(1)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-4000:]
    seen = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    assert set(seen) == {"driver", "task", "rank0", "rank1"}
    for label, record in seen.items():
        assert "/runtime_resources/working_dir_files/" in record["file"], (label, record["file"])
        assert not record["file"].startswith(str(REPO_ROOT)), label
    assert seen["rank0"]["node"] != seen["rank1"]["node"], "STRICT_SPREAD: one worker per node"
