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


def test_readme_walkthrough_pretrains_across_two_nodes_on_an_s3_store(
    cluster, s3_store_url, shared_data_dir, monkeypatch, capsys
):
    """README "Running on a Ray cluster", step by step: a 2-node cluster, an S3 store (moto), submit
    pre-training with one worker per node, follow the job, verify and trace the model in the store,
    then re-train on the stored shards with another setting."""
    from lmforge.infra.remote_fs import open_location

    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    address = ["--address", cluster.dashboard_url]
    store = ["--store", s3_store_url]
    # Credentials travel with the job (--env); the endpoint and region are forwarded by default.
    credentials = ["--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY"]
    spread = ["--set", "pretrain.placement_strategy=STRICT_SPREAD", "--set", "pretrain.checkpoint_every=10"]
    fs, root = open_location(s3_store_url)

    def submit_and_wait(*extra: str) -> dict:
        start = time.monotonic()
        code = main(
            ["submit", str(REPO_ROOT / "configs" / "tiny.yaml"), *SMALL, *spread, *extra]
            + ["--stage", "pretrain", *store, *credentials, "--wait", *address]
        )
        out = capsys.readouterr().out
        job_id = submitted_id(out)
        with capsys.disabled():
            print(f"\nsubmit --stage pretrain {' '.join(extra)}: {time.monotonic() - start:.1f} s")
        assert code == 0, out[-8000:]
        run_id = job_id.removeprefix("lmforge-")
        # The run record is in the object store: nothing of the run is on this machine's disk.
        return json.loads(fs.cat_file(f"{root}/runs/{run_id}/run.json"))

    first = submit_and_wait("--set", "pretrain.max_steps=20")
    assert first["status"] == "completed"
    assert [first["stages"][name]["status"] for name in ("clean", "tokenizer", "shard", "pretrain")] == [
        "completed"
    ] * 4
    pretrain = first["stages"]["pretrain"]
    nodes = pretrain["metrics"]["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"STRICT_SPREAD: one worker per node, got {nodes}"
    assert pretrain["metrics"]["restarts"] == []
    model_id = pretrain["artifact_id"]
    # The worker on the second node read the shards from the store into that node's own cache.
    shards_id = first["stages"]["shard"]["artifact_id"]
    node_cache = cluster.nodes[1].temp_dir / "lmforge-cache"
    fetched = [path for path in node_cache.rglob("dataset_manifest.json") if shards_id in str(path)]
    assert fetched, f"no copy of {shards_id} in the second node's cache {node_cache}"
    assert fs.exists(f"{root}/artifacts/{model_id}/manifest.json")
    assert pretrain["path"].startswith(f"{s3_store_url}/artifacts/{model_id}/attempts/")

    # Verify and trace the model from this machine, against the object store.
    assert main(["verify", model_id, *store]) == 0
    assert f"{model_id}: ok (" in capsys.readouterr().out
    assert main(["lineage", model_id, *store]) == 0
    lineage = capsys.readouterr().out
    assert first["stages"]["shard"]["artifact_id"] in lineage and "wiki_00.txt" in lineage

    # Ad hoc: re-train on the stored shards with another setting; the data stages are reused.
    second = submit_and_wait("--set", "pretrain.max_steps=24")
    assert [second["stages"][name]["status"] for name in ("clean", "tokenizer", "shard")] == ["reused"] * 3
    assert second["stages"]["shard"]["artifact_id"] == first["stages"]["shard"]["artifact_id"]
    assert second["stages"]["pretrain"]["status"] == "completed"
    assert second["stages"]["pretrain"]["artifact_id"] != model_id
    tokens = [run["stages"]["pretrain"]["metrics"]["num_tokens_trained"] for run in (first, second)]
    assert tokens[1] * 20 == tokens[0] * 24, tokens


def test_jobs_stop_cancels_a_running_job_and_its_run_records_it(
    cluster, shared_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    store, address = tmp_path / "store", ["--address", cluster.dashboard_url]
    long_pretrain = ["--set", "pretrain.max_steps=5000", "--set", "pretrain.checkpoint_every=1000"]
    config = str(REPO_ROOT / "configs" / "tiny.yaml")
    command = ["submit", config, *SMALL, *long_pretrain, "--stage", "pretrain", "--store", str(store)]
    assert main([*command, *address]) == 0
    job_id = submitted_id(capsys.readouterr().out)
    record_path = store / "runs" / job_id.removeprefix("lmforge-") / "run.json"
    deadline = time.monotonic() + 300
    while not (record_path.is_file() and "shard" in json.loads(record_path.read_text())["stages"]):
        assert time.monotonic() < deadline, "the job never reached pre-training"
        time.sleep(1)
    time.sleep(5)  # inside pre-training
    stopped_at = time.monotonic()
    assert main(["jobs", "stop", job_id, *address]) == 0
    assert "stop requested" in capsys.readouterr().out
    while json.loads(record_path.read_text())["status"] == "running":
        assert time.monotonic() - stopped_at < 90, "the stopped run never recorded its end"
        time.sleep(1)
    record = json.loads(record_path.read_text())
    with capsys.disabled():
        print(f"\njobs stop -> run.json {record['status']} in {time.monotonic() - stopped_at:.1f} s")
    assert record["status"] == "cancelled", record.get("error")
    assert "pretrain" not in record["stages"] or record["stages"]["pretrain"].get("status") != "completed"
    while True:
        assert main(["jobs", "status", job_id, *address]) == 0
        if f"job {job_id}: STOPPED" in capsys.readouterr().out:
            break
        assert time.monotonic() - stopped_at < 120, "Ray never marked the job stopped"
        time.sleep(1)
