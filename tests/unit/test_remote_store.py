"""URL stores against a real S3 endpoint (moto's server): manifest-last publishing, existing-manifest-wins,
partial downloads checked by sha256, verify, lineage, reuse checks, run records, and `store: ` errors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.flows.run_record import RunRecord, list_runs
from lmforge.infra.lineage_text import format_lineage
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore, check_store_location, open_store
from lmforge.infra.store_gc import collect_garbage

pytestmark = pytest.mark.unit

FILES = {
    "hf/config.json": b'{"hidden_size": 8}',
    "hf/model.safetensors": b"\x00weights" * 100,
    "deepspeed/optimizer_shard_0.pt": b"\x01optimizer" * 300,
    "readme.txt": b"hello",
    "telemetry/events.log": b"",
}


def publish(store: ArtifactStore, files=FILES, recipe="r1", run_id="run-a", parents=(), kind="model"):
    with store.staging(run_id) as out:
        for relative, content in files.items():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(content)
        return store.publish(
            out,
            kind=kind,
            stage=kind,
            parents=list(parents),
            config={"x": 1},
            recipe_key=recipe,
            run_id=run_id,
        )


def second_node(url: str, monkeypatch, tmp_path: Path, name: str = "node-b") -> ArtifactStore:
    """Another machine: the same store URL, its own cache."""
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / name))
    return open_store(url)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_publish_uploads_the_manifest_last_and_keeps_the_staged_copy_as_cache(s3_store_url, monkeypatch):
    store = open_store(s3_store_url)
    assert store.is_remote and store.location == s3_store_url
    uploads: list[str] = []
    put_file = store.fs.put_file
    monkeypatch.setattr(
        store.fs, "put_file", lambda lpath, rpath, **kw: (uploads.append(rpath), put_file(lpath, rpath, **kw))
    )
    manifest = publish(store)
    artifact_id = manifest["id"]
    names = [path.rsplit(f"{artifact_id}/", 1)[1] for path in uploads]
    # Files go into this attempt's own folder, the manifest naming it comes last.
    attempt = manifest["remote_folder"]
    assert attempt.startswith("attempts/")
    assert names[-2:] == [f"{attempt}/fasthash.json", "manifest.json"]
    assert sorted(names[:-2]) == sorted(f"{attempt}/data/{relative}" for relative in FILES)
    assert store.fs.exists(f"{s3_store_url}/recipes/r1.json")
    # The publisher's staged files are its cache: reading them downloads nothing.
    monkeypatch.setattr(
        store.fs, "get_file", lambda *a, **kw: pytest.fail("publisher downloaded its own files")
    )
    data = store.local_files(artifact_id)
    assert {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()} == set(FILES)
    assert data.is_relative_to(store.root) and not list((store.root / "tmp").iterdir())


def test_crash_mid_upload_leaves_no_visible_artifact(s3_store_url, monkeypatch, tmp_path):
    store = open_store(s3_store_url)
    put_file = store.fs.put_file
    calls = []

    def crash_after_first(lpath, rpath, **kw):
        calls.append(rpath)
        if len(calls) > 1:
            raise ConnectionError("network gone")
        put_file(lpath, rpath, **kw)

    monkeypatch.setattr(store.fs, "put_file", crash_after_first)
    with pytest.raises(ConnectionError):
        publish(store)
    monkeypatch.setattr(store.fs, "put_file", put_file)
    reader = second_node(s3_store_url, monkeypatch, tmp_path)
    assert reader.fs.find(f"{s3_store_url}/artifacts"), "the first data file did reach the store"
    assert reader.find_by_recipe("r1") is None
    assert reader.manifests() == []
    artifact_id = reader.fs.ls(f"{s3_store_url}/artifacts", detail=False)[0].rsplit("/", 1)[1]
    with pytest.raises(ArtifactError, match=f"no artifact '{artifact_id}' in store {s3_store_url}"):
        reader.get(artifact_id)
    # The next attempt publishes over the orphans, and the result is intact.
    manifest = publish(reader)
    assert manifest["id"] == artifact_id and reader.verify(artifact_id) == []


def test_concurrent_publishes_of_one_recipe_keep_the_first_record(s3_store_url, monkeypatch, tmp_path):
    first = open_store(s3_store_url)
    winner = publish(first, run_id="run-a")
    second = second_node(s3_store_url, monkeypatch, tmp_path)
    assert publish(second, run_id="run-b") == winner  # saw the manifest: uploaded nothing
    # A race: the loser checked before the winner's manifest existed, uploaded, and then lost the create.
    third = second_node(s3_store_url, monkeypatch, tmp_path, "node-c")
    monkeypatch.setattr(third, "_exists", lambda path: False)
    record = publish(third, run_id="run-c")
    assert (record["run_id"], record["created_at"]) == (winner["run_id"], winner["created_at"])
    remote = json.loads(third.fs.cat_file(f"{s3_store_url}/artifacts/{winner['id']}/manifest.json"))
    assert remote["run_id"] == "run-a"
    assert not third.artifact_dir(winner["id"]).exists(), (
        "the loser must not cache files the record does not describe"
    )
    assert third.verify(winner["id"]) == []
    assert [manifest["id"] for manifest in third.manifests("model")] == [winner["id"]]
    # The loser uploaded into its own attempt folder (telemetry differs between publishers, so a
    # shared folder would mix files) and removed it: only the winner's folder remains.
    attempts = third.fs.ls(f"{s3_store_url}/artifacts/{winner['id']}/attempts", detail=False)
    assert [path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path in attempts] == [
        winner["remote_folder"]
    ]


def test_simultaneous_publishes_from_two_nodes_agree_on_one_record(s3_store_url, monkeypatch, tmp_path):
    nodes = [second_node(s3_store_url, monkeypatch, tmp_path, f"node-{n}") for n in range(2)]
    barrier = threading.Barrier(2)
    results: dict[int, dict] = {}

    def publish_on(n: int) -> None:
        barrier.wait()
        results[n] = publish(nodes[n], run_id=f"run-{n}")

    threads = [threading.Thread(target=publish_on, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results[0] == results[1]
    remote = json.loads(nodes[0].fs.cat_file(f"{s3_store_url}/artifacts/{results[0]['id']}/manifest.json"))
    assert remote == results[0] and nodes[0].verify(remote["id"]) == []


def test_local_files_downloads_only_the_prefix_once(s3_store_url, monkeypatch, tmp_path):
    artifact_id = publish(open_store(s3_store_url))["id"]
    reader = second_node(s3_store_url, monkeypatch, tmp_path)
    fetched: list[str] = []
    get_file = reader.fs.get_file
    monkeypatch.setattr(
        reader.fs,
        "get_file",
        lambda rpath, lpath, **kw: (fetched.append(rpath), get_file(rpath, lpath, **kw)),
    )
    data = reader.local_files(artifact_id, "hf/")
    assert sorted(path.rsplit("/data/", 1)[1] for path in fetched) == [
        "hf/config.json",
        "hf/model.safetensors",
    ]
    assert (data / "hf" / "model.safetensors").read_bytes() == FILES["hf/model.safetensors"]
    assert not (data / "deepspeed").exists()
    reader.local_files(artifact_id, "hf/")
    assert len(fetched) == 2, "cached files are not downloaded again"
    assert reader.data_path(artifact_id) == data and (data / "deepspeed" / "optimizer_shard_0.pt").is_file()
    assert len(fetched) == len(FILES)


def test_a_tampered_download_is_rejected_and_never_visible(s3_store_url, monkeypatch, tmp_path):
    artifact_id = publish(open_store(s3_store_url))["id"]
    reader = second_node(s3_store_url, monkeypatch, tmp_path)

    def tampered(rpath, lpath, **kw):
        Path(lpath).write_bytes(b"\x00weightz" * 100)  # right size, wrong bytes

    monkeypatch.setattr(reader.fs, "get_file", tampered)
    with pytest.raises(ArtifactError, match="changed file: s3://.*hf/model.safetensors"):
        reader.local_files(artifact_id, "hf/model")
    assert not (reader.artifact_dir(artifact_id) / "data" / "hf" / "model.safetensors").exists()
    assert not list((reader.root / "tmp").iterdir())


def test_verify_streams_every_remote_file_and_names_what_changed(s3_store_url):
    store = open_store(s3_store_url)
    artifact_id = publish(store)["id"]
    assert store.verify(artifact_id) == []
    data = store.data_location(artifact_id)
    store.fs.pipe_file(f"{data}/hf/model.safetensors", b"\x00weightz" * 100)  # same size
    store.fs.rm_file(f"{data}/readme.txt")
    store.fs.pipe_file(f"{data}/extra.bin", b"x")
    problems = store.verify(artifact_id)
    assert problems == [
        f"changed file: {data}/hf/model.safetensors (expected sha256 {sha256(FILES['hf/model.safetensors'])})",
        f"missing file: {data}/readme.txt",
        f"unexpected file: {data}/extra.bin",
    ]


def test_lineage_walks_remote_parents(s3_store_url, monkeypatch, tmp_path):
    store = open_store(s3_store_url)
    parent = publish(store, files={"vocab.txt": b"a b c"}, recipe="tok", kind="tokenizer")
    child = publish(store, recipe="model", parents=[parent["id"]])
    tree = second_node(s3_store_url, monkeypatch, tmp_path).lineage(child["id"])
    assert tree["id"] == child["id"] and [node["id"] for node in tree["parents"]] == [parent["id"]]
    assert parent["id"] in "\n".join(format_lineage(tree))


def test_reuse_check_against_the_remote_and_a_damaged_cache(s3_store_url, monkeypatch, tmp_path):
    store = open_store(s3_store_url)
    manifest = publish(store)
    artifact_id = manifest["id"]
    cached = store.local_files(artifact_id) / "hf" / "config.json"
    cached.write_bytes(b'{"hidden_size": 9}')  # this node's copy rots; the store is fine
    assert store.check_reusable(manifest) == []
    assert not cached.exists(), "a damaged cached file is deleted"
    assert (
        store.local_files(artifact_id, "hf/config.json").joinpath("hf/config.json").read_bytes()
        == FILES["hf/config.json"]
    )
    readme = f"{store.data_location(artifact_id)}/readme.txt"
    assert readme.startswith(f"{s3_store_url}/artifacts/{artifact_id}/attempts/")
    store.fs.rm_file(readme)
    problems = store.check_reusable(manifest)
    assert problems == [f"missing file: {readme}"]
    moved = store.quarantine(artifact_id, problems)
    assert moved is not None and moved.startswith(f"{s3_store_url}/quarantine/{artifact_id}-")
    assert store.fs.exists(f"{moved}/manifest.json") and store.fs.exists(f"{moved}/quarantine.json")
    with pytest.raises(ArtifactError, match="no artifact"):
        second_node(s3_store_url, monkeypatch, tmp_path).get(artifact_id)
    assert not store.artifact_dir(artifact_id).exists()


def write_result(out: Path, work: Path) -> dict:
    (out / "result.txt").write_text("42")
    return {"answer": 42}


def test_stage_runner_computes_then_reuses_from_another_node(s3_store_url, monkeypatch, tmp_path):
    code = ("lmforge.infra.store",)
    first = StageRunner(open_store(s3_store_url), "run-1").run(
        "stage", "thing", config={"a": 1}, parents=[], code=code, compute=write_result
    )
    runner = StageRunner(second_node(s3_store_url, monkeypatch, tmp_path), "run-2")
    again = runner.run("stage", "thing", config={"a": 1}, parents=[], code=code, compute=write_result)
    assert (first.status, again.status, again.artifact_id) == ("completed", "reused", first.artifact_id)
    manifest = runner.store.get(first.artifact_id)
    assert again.path == f"{s3_store_url}/artifacts/{first.artifact_id}/{manifest['remote_folder']}/data"
    assert (runner.store.local_files(again.artifact_id) / "result.txt").read_text() == "42"


def test_run_records_are_mirrored_and_listed_from_the_remote(s3_store_url, monkeypatch, tmp_path):
    store = open_store(s3_store_url)
    record = RunRecord(store, "demo-1", "demo", {"name": "demo"})
    record.finish("completed")
    assert record.data["store"] == s3_store_url
    elsewhere = {"run_id": "demo-2", "status": "running", "host": "another-host", "pid": 1, "stages": {}}
    store.write_run_record("demo-2", {**elsewhere, "started_at": "2026-01-01T00:00:00+00:00"})
    assert socket.gethostname() != "another-host"
    runs = list_runs(second_node(s3_store_url, monkeypatch, tmp_path))
    assert [(run["run_id"], run["status"]) for run in runs] == [
        ("demo-2", "running"),
        ("demo-1", "completed"),
    ]


def test_work_area_and_arrow_filesystem_are_remote_and_picklable(s3_store_url):
    store = open_store(s3_store_url)
    area = store.work_area("k" * 64)
    assert area == f"{s3_store_url}/work/{'k' * 32}"
    filesystem = pickle.loads(pickle.dumps(store.arrow_filesystem()))
    path = store.arrow_path(area)
    assert "://" not in path
    with filesystem.open_output_stream(f"{path}/checkpoint_000/state.bin") as out:
        out.write(b"step 10")
    assert store.fs.cat_file(f"{area}/checkpoint_000/state.bin") == b"step 10"
    artifact_id = publish(store)["id"]
    assert pickle.loads(pickle.dumps(store)).get(artifact_id)["id"] == artifact_id
    store.remove_work_area("k" * 64)
    assert not store.fs.exists(f"{area}/checkpoint_000/state.bin")


def test_gc_collects_this_nodes_leftovers_and_leaves_the_store_alone(s3_store_url):
    store = open_store(s3_store_url)
    artifact_id = publish(store)["id"]
    leftover = store.root / "tmp" / "download-0123"
    leftover.write_bytes(b"half a file")
    os.utime(leftover, (0, 0))
    report = collect_garbage(store, older_than=3600)
    assert [path for path, _ in report.removed] == [leftover] and not leftover.exists()
    assert store.verify(artifact_id) == [] and store.local_files(artifact_id).is_dir()


READ_IN_A_FRESH_PROCESS = """
import pickle, sys
filesystem, path = pickle.load(open(sys.argv[1], "rb"))
with filesystem.open_input_stream(path) as handle:
    sys.stdout.write(handle.read().decode())
"""


def test_the_arrow_filesystem_carries_the_endpoint_to_a_worker_without_it(s3_store_url, tmp_path):
    """A Ray worker unpickles the filesystem; the endpoint travels with it (credentials come from its env)."""
    store = open_store(s3_store_url)
    area = store.work_area("w" * 64)
    store.fs.pipe_file(f"{area}/note.txt", b"from the driver")
    pickled = tmp_path / "fs.pkl"
    pickled.write_bytes(pickle.dumps((store.arrow_filesystem(), store.arrow_path(f"{area}/note.txt"))))
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_ENDPOINT_URL")}
    result = subprocess.run(
        [sys.executable, "-c", READ_IN_A_FRESH_PROCESS, str(pickled)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout == b"from the driver"


def test_local_store_keeps_its_behaviour(tmp_path):
    store = open_store(tmp_path / "store")
    assert type(store) is ArtifactStore and not store.is_remote
    assert store.location == str((tmp_path / "store").resolve()) and store.root == Path(store.location)
    assert (
        store.work_area("k" * 64) == str(store.root / "work" / ("k" * 32))
        and store.arrow_filesystem() is None
    )
    assert open_store(f"file://{tmp_path / 'store'}").root == store.root
    with pytest.raises(ConfigError, match="^store: .* is a URL"):
        ArtifactStore("s3://bucket/prefix")


def test_any_fsspec_filesystem_serves_as_a_store(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    url = f"memory://lmforge-test-{uuid.uuid4().hex[:8]}/store"
    artifact_id = publish(open_store(url))["id"]
    reader = second_node(url, monkeypatch, tmp_path)
    assert reader.local_files(artifact_id, "readme").joinpath("readme.txt").read_bytes() == b"hello"
    assert reader.verify(artifact_id) == [] and [m["id"] for m in reader.manifests("model")] == [artifact_id]


def test_a_scheme_without_a_filesystem_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"^store: no filesystem for scheme 's3x' in 's3x://b/p'"):
        open_store("s3x://b/p")
    with pytest.raises(ConfigError, match="^store: "):
        check_store_location("s3x://b/p")
    assert not (tmp_path / "cache").exists(), "raised before any work"


def test_a_missing_bucket_is_a_config_error(s3_store_url, monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with pytest.raises(
        ConfigError, match=r"^store: bucket 'no-such-bucket' of 's3://no-such-bucket/p' does not exist"
    ):
        open_store("s3://no-such-bucket/p")
    assert not (tmp_path / "fresh-cache").exists(), "raised before any work"
    check_store_location(s3_store_url)  # an existing bucket passes
    monkeypatch.setenv("LMFORGE_STORE", s3_store_url + "/")
    assert open_store().location == s3_store_url
    monkeypatch.setenv("LMFORGE_STORE_OPTIONS", "{not json")
    with pytest.raises(ConfigError, match=r"^store: \$LMFORGE_STORE_OPTIONS is not valid JSON"):
        open_store()
