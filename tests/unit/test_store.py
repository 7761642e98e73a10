"""Artifact store: hashing, atomic publish, reuse by recipe, verify, lineage."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lmforge.app.cli import main
from lmforge.core.errors import ArtifactError
from lmforge.infra.lineage_text import format_lineage
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile, hash_external

pytestmark = pytest.mark.unit


def publish_simple(
    store: ArtifactStore, content: bytes, parents=(), kind="thing", recipe="r1", external=None
):
    with store.staging() as out:
        (out / "sub").mkdir()
        (out / "sub" / "a.bin").write_bytes(content)
        (out / "b.txt").write_text("hello")
        return store.publish(
            out,
            kind=kind,
            stage=kind,
            parents=list(parents),
            config={"x": 1},
            recipe_key=recipe,
            external_files=hash_external(external or []),
        )


def test_publish_records_hashes_and_lineage_fields(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    manifest = publish_simple(store, b"\x00\x01payload")
    files = {record["path"]: record for record in manifest["files"]}
    assert files["sub/a.bin"]["sha256"] == hashlib.sha256(b"\x00\x01payload").hexdigest()
    assert files["sub/a.bin"]["size"] == 9
    assert set(files) == {"sub/a.bin", "b.txt"}
    for key in ("parents", "config", "code", "environment", "recipe_key", "content_id", "created_at"):
        assert key in manifest
    assert "torch" in manifest["environment"]["packages"]
    assert store.get(manifest["id"]) == manifest
    assert (store.data_path(manifest["id"]) / "sub" / "a.bin").read_bytes() == b"\x00\x01payload"
    assert store.find_by_recipe("r1")["id"] == manifest["id"]
    assert not list((store.root / "tmp").iterdir()), "staging directory must be gone after publish"


def test_identical_content_and_recipe_give_same_id_different_content_different_id(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    first = publish_simple(store, b"same")
    second = publish_simple(store, b"same")
    third = publish_simple(store, b"other", recipe="r2")
    assert first["id"] == second["id"]
    assert third["id"] != first["id"]


def test_crash_before_publish_leaves_nothing_visible(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        with store.staging() as out:
            (out / "partial.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-stage")
    assert store.manifests() == []
    assert not list((store.root / "tmp").iterdir())
    assert not list((store.root / "artifacts").iterdir())


def test_directory_without_manifest_is_not_an_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    (store.root / "artifacts" / "thing-deadbeef" / "data").mkdir(parents=True)
    assert store.manifests() == []
    with pytest.raises(ArtifactError, match="thing-deadbeef"):
        store.get("thing-deadbeef")


def test_verify_catches_flipped_byte_missing_and_unexpected_files(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    manifest = publish_simple(store, b"abcdef")
    artifact_id = manifest["id"]
    assert store.verify(artifact_id) == []
    target = store.data_path(artifact_id) / "sub" / "a.bin"
    data = bytearray(target.read_bytes())
    data[2] ^= 0x01
    target.write_bytes(bytes(data))
    problems = store.verify(artifact_id)
    assert len(problems) == 1 and "changed file" in problems[0] and "a.bin" in problems[0]
    (store.data_path(artifact_id) / "b.txt").unlink()
    (store.data_path(artifact_id) / "extra").write_text("x")
    problems = store.verify(artifact_id)
    assert any("missing file" in p and "b.txt" in p for p in problems)
    assert any("unexpected file" in p and "extra" in p for p in problems)


def test_verify_cli_exit_codes_name_the_file(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    artifact_id = publish_simple(store, b"abcdef")["id"]
    assert main(["verify", artifact_id, "--store", str(store.root)]) == 0
    target = store.data_path(artifact_id) / "b.txt"
    target.write_text("hellO")
    assert main(["verify", artifact_id, "--store", str(store.root)]) == 1
    assert "b.txt" in capsys.readouterr().err
    assert main(["verify", "nope-123", "--store", str(store.root)]) == 1


def test_lineage_walks_to_raw_inputs(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("raw corpus")
    store = ArtifactStore(tmp_path / "store")
    root = publish_simple(store, b"a", kind="corpus", recipe="c", external=[ExternalFile("raw.txt", raw)])
    child = publish_simple(store, b"b", parents=[root["id"]], kind="tokenizer", recipe="t")
    grandchild = publish_simple(store, b"c", parents=[child["id"], root["id"]], kind="shards", recipe="s")
    tree = store.lineage(grandchild["id"])
    assert [p["id"] for p in tree["parents"]] == [child["id"], root["id"]]
    assert (
        tree["parents"][0]["parents"][0]["inputs"][0]["sha256"] == hashlib.sha256(b"raw corpus").hexdigest()
    )
    text = "\n".join(format_lineage(tree))
    assert "raw.txt" in text and child["id"] in text
    assert main(["lineage", grandchild["id"], "--json", "--store", str(store.root)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == grandchild["id"]
    # As graphs: the shared ancestor once, with an edge to each child.
    assert main(["lineage", grandchild["id"], "--format", "mermaid", "--store", str(store.root)]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR") and mermaid.count(root["id"]) == 1 and "raw.txt" in mermaid
    assert main(["lineage", grandchild["id"], "--format", "dot", "--store", str(store.root)]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph lineage {") and dot.count(f'"{root["id"]}" ->') == 2
    raw.write_text("raw corpus, edited")
    assert any("changed input file" in p for p in store.verify(root["id"]))


def test_publish_refuses_unknown_parent(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with store.staging() as out:
        (out / "f").write_text("x")
        with pytest.raises(ArtifactError, match="missing-parent"):
            store.publish(out, kind="k", stage="k", parents=["missing-parent"], config={}, recipe_key="r")


def test_stage_runner_reuses_then_recomputes_on_change_or_force(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    calls = []

    def compute(out: Path, work: str):
        assert Path(work).is_dir() and Path(work).parent == store.root / "work"
        calls.append(1)
        (out / "result.txt").write_text("42")
        return {"value": 42}

    def run(runner, config):
        return runner.run(
            "stage", "thing", config=config, parents=[], code=("lmforge.infra.store",), compute=compute
        )

    first = run(StageRunner(store, "run-1"), {"a": 1})
    second = run(StageRunner(store, "run-2"), {"a": 1})
    assert (first.status, second.status) == ("completed", "reused")
    assert second.artifact_id == first.artifact_id and second.metrics == {"value": 42}
    assert run(StageRunner(store, "run-3"), {"a": 2}).status == "completed"
    assert run(StageRunner(store, "run-4", forced={"stage"}), {"a": 1}).status == "completed"
    # A damaged stored artifact is recomputed rather than reused.
    os.remove(Path(first.path) / "result.txt")
    assert run(StageRunner(store, "run-5"), {"a": 1}).status == "completed"
    assert len(calls) == 4
    assert not list((store.root / "work").iterdir()), "scratch space is removed after publishing"


def test_children_follow_parent_content_not_parent_recipe(tmp_path):
    store = ArtifactStore(tmp_path / "store")

    def make(text):
        def compute(out: Path, work: str):
            (out / "f.txt").write_text(text)
            return {}

        return compute

    def parent(runner, config, text):
        return runner.run(
            "parent", "p", config=config, parents=[], code=("lmforge.infra.store",), compute=make(text)
        )

    def child(runner, parent_id):
        return runner.run(
            "child", "c", config={}, parents=[parent_id], code=("lmforge.infra.store",), compute=make("child")
        )

    first_parent = parent(StageRunner(store, "r1"), {"v": 1}, "same bytes")
    first_child = child(StageRunner(store, "r1"), first_parent.artifact_id)
    # A different parent recipe that yields identical bytes: the child is still reused.
    second_parent = parent(StageRunner(store, "r2"), {"v": 2}, "same bytes")
    assert second_parent.status == "completed" and second_parent.artifact_id != first_parent.artifact_id
    assert child(StageRunner(store, "r2"), second_parent.artifact_id).status == "reused"
    # Different parent bytes: the child is recomputed.
    third_parent = parent(StageRunner(store, "r3"), {"v": 3}, "other bytes")
    again = child(StageRunner(store, "r3"), third_parent.artifact_id)
    assert again.status == "completed" and again.artifact_id != first_child.artifact_id


def test_verify_catches_edited_manifest(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    manifest = publish_simple(store, b"abc")
    path = store.root / "artifacts" / manifest["id"] / "manifest.json"
    edited = json.loads(path.read_text())
    edited["files"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(edited))
    problems = store.verify(manifest["id"])
    assert any("manifest" in p and "content_id" in p for p in problems)


def publish_with_telemetry(store: ArtifactStore, weights: bytes, seconds: str) -> dict:
    with store.staging() as out:
        (out / "weights.bin").write_bytes(weights)
        (out / "telemetry").mkdir()
        (out / "telemetry" / "timings.json").write_text(seconds)
        return store.publish(out, kind="model", stage="pretrain", parents=[], config={}, recipe_key="r")


def test_telemetry_is_verified_but_not_part_of_the_content_id(tmp_path):
    first = publish_with_telemetry(ArtifactStore(tmp_path / "a"), b"w", '{"seconds": 1.5}')
    second = publish_with_telemetry(ArtifactStore(tmp_path / "b"), b"w", '{"seconds": 9.25}')
    changed = publish_with_telemetry(ArtifactStore(tmp_path / "c"), b"W", '{"seconds": 1.5}')
    assert first["content_id"] == second["content_id"] and first["id"] == second["id"]
    assert changed["id"] != first["id"]
    assert "telemetry/timings.json" in {record["path"] for record in first["files"]}
    store = ArtifactStore(tmp_path / "a")
    assert store.verify(first["id"]) == []
    (store.data_path(first["id"]) / "telemetry" / "timings.json").write_text('{"seconds": 0}')
    assert any("changed file" in problem for problem in store.verify(first["id"]))


def flip_byte_keeping_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


def test_reuse_check_reads_every_file_by_fast_hash_and_sees_what_mtime_hides(tmp_path, monkeypatch):
    from lmforge.infra import integrity

    store = ArtifactStore(tmp_path / "store")
    manifest = publish_simple(store, b"abcdef")
    slow: list[Path] = []
    real_sha256 = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: slow.append(path) or real_sha256(path))
    assert store.check_reusable(manifest) == [] and slow == [], "checked by xxh3, not sha256"
    target = store.data_path(manifest["id"]) / "b.txt"
    before = target.stat()
    flip_byte_keeping_size(target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime, other bytes
    assert any("changed file" in p and "b.txt" in p and "xxh3" in p for p in store.check_reusable(manifest))
    flip_byte_keeping_size(target)  # restored
    (store.root / "artifacts" / manifest["id"] / "fasthash.json").unlink()
    assert store.check_reusable(manifest) == [] and len(slow) == 2, "no fast hashes: sha256 every file"
    slow.clear()
    assert store.check_reusable(manifest) == [] and slow == [], "the record was written again"


def test_damaged_artifact_is_moved_aside_and_recomputed_under_the_same_id(tmp_path):
    store = ArtifactStore(tmp_path / "store")

    def compute(out: Path, work: str):
        (out / "result.txt").write_text("42")
        return {}

    def run(run_id):
        return StageRunner(store, run_id).run(
            "stage", "thing", config={}, parents=[], code=("lmforge.infra.store",), compute=compute
        )

    first = run("r1")
    flip_byte_keeping_size(Path(first.path) / "result.txt")
    second = run("r2")
    assert second.status == "completed" and second.artifact_id == first.artifact_id
    assert store.verify(second.artifact_id) == []
    (moved,) = (store.root / "quarantine").iterdir()
    assert moved.name.startswith(first.artifact_id)
    assert (moved / "data" / "result.txt").read_text() != "42"
    assert "changed file" in json.loads((moved / "quarantine.json").read_text())["problems"][0]
    assert run("r3").status == "reused"


def test_publishing_over_a_damaged_artifact_replaces_it_whole(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    first = publish_simple(store, b"same")
    (store.data_path(first["id"]) / "b.txt").unlink()
    second = publish_simple(store, b"same")
    assert second["id"] == first["id"] and store.verify(first["id"]) == []
    assert len(list((store.root / "quarantine").iterdir())) == 1
    # An intact artifact is never replaced: publishing the same content again keeps the first record.
    third = publish_simple(store, b"same")
    assert third["created_at"] == second["created_at"]
    assert len(list((store.root / "quarantine").iterdir())) == 1
