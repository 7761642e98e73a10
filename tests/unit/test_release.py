"""Release bundles, signatures and the checks `reproduce` makes, on a small store built in the test."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from lmforge.app import release as release_mod
from lmforge.app.release import ReleaseError, build_release, card_metadata, load_release, verify_release
from lmforge.app.reproduce import (
    first_file_difference,
    hardware_drift,
    input_problems,
    is_telemetry_metric,
    metric_differences,
    package_drift,
    parse_stages,
    weight_difference,
)
from lmforge.core.errors import ConfigError
from lmforge.infra.lineage import code_version, sha256_json, source_files
from lmforge.infra.signing import SignatureError, generate_key_pair
from lmforge.infra.store import ArtifactStore, ExternalFile, hash_external

pytestmark = pytest.mark.unit


def tiny_hf_model(folder: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=32, n_positions=16)
    GPT2LMHeadModel(config).save_pretrained(folder)


@pytest.fixture
def run_store(tmp_path, monkeypatch):
    """A store holding a completed run: corpus <- tokenizer <- model, plus the run's report."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("raw text\n")
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(data))
    store = ArtifactStore(tmp_path / "store")

    def publish(kind, stage, parents, folder_or_files, metrics, external=()):
        with store.staging("run-1") as out:
            if isinstance(folder_or_files, Path):
                shutil.copytree(folder_or_files, out, dirs_exist_ok=True)
            else:
                for name, content in folder_or_files.items():
                    (out / name).parent.mkdir(parents=True, exist_ok=True)
                    (out / name).write_bytes(content)
            manifest = store.publish(
                out,
                kind=kind,
                stage=stage,
                parents=parents,
                config={stage: {"setting": 1}},
                recipe_key=sha256_json([stage]),
                seed=7,
                metrics=metrics,
                run_id="run-1",
                external_files=hash_external(list(external)),
            )
        return manifest["id"]

    clean_metrics = {"num_read": 2, "num_kept": 1, "dropped": {"too_short": 1}}
    corpus = publish(
        "corpus",
        "clean",
        [],
        {"part-00000.parquet": b"rows"},
        clean_metrics,
        [ExternalFile("corpus.txt", data / "corpus.txt")],
    )
    tokenizer = publish("tokenizer", "tokenizer", [corpus], {"tokenizer.json": b"{}"}, {"vocab_size": 32})
    hf = tmp_path / "hf-src" / "hf"
    tiny_hf_model(hf)
    model_metrics = {"num_parameters": 500, "final_val_loss": 2.5, "tokens_per_second": 10.0}
    model = publish("model", "pretrain", [tokenizer], hf.parent, model_metrics)
    eval_metrics = {"perplexity": 12.5, "seconds": 1.0}
    evaluation = publish(
        "evaluation", "eval/wikitext_perplexity", [model], {"metrics.json": b"{}"}, eval_metrics
    )
    report = publish("report", "report", [], {"report.md": b"# report\n", "loss_curve.png": b"png"}, {})
    stages = {
        "clean": (corpus, clean_metrics),
        "tokenizer": (tokenizer, {"vocab_size": 32}),
        "pretrain": (model, model_metrics),
        "eval/wikitext_perplexity": (evaluation, eval_metrics),
        "report": (report, {}),
    }
    record = {
        "run_id": "run-1",
        "config_name": "unit",
        "status": "completed",
        "code": code_version(),
        "code_files": source_files(),
        "config": {"name": "unit", "pretrain": {"objective": "clm", "max_steps": 3}},
        "stages": {name: {"artifact_id": aid, "metrics": metrics} for name, (aid, metrics) in stages.items()},
    }
    store.write_run_record("run-1", record)
    return store, record


@pytest.fixture
def key_pair(tmp_path):
    return generate_key_pair(tmp_path / "keys" / "release-key")


def test_keygen_writes_an_owner_only_private_key_and_refuses_to_overwrite(tmp_path):
    private, public = generate_key_pair(tmp_path / "k")
    assert oct(os.stat(private).st_mode & 0o777) == "0o600"
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_key_pair(tmp_path / "k")


def test_release_bundle_verifies_and_its_model_loads(run_store, key_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    store, record = run_store
    result = build_release(store, "run-1", tmp_path / "bundle", sign_key=key_pair[0])
    bundle = result.path
    notes, verified = verify_release(bundle, key_pair[1], require_signature=True)
    assert verified == load_release(bundle)[1]
    assert notes[0].startswith("signature: ok") and notes[-1].endswith("ok")
    AutoModelForCausalLM.from_pretrained(bundle / "model")
    _, release, _ = load_release(bundle)
    # Ancestors parents-first, the report left out; every file listed with its hash.
    assert [entry["stage"] for entry in release["artifacts"]] == [
        "clean",
        "tokenizer",
        "pretrain",
        "eval/wikitext_perplexity",
    ]
    assert release["raw_inputs"][0]["uri"] == "corpus.txt" and len(release["raw_inputs"][0]["sha256"]) == 64
    assert {item["path"] for item in release["files"]} >= {"model/model.safetensors", "model/README.md"}
    model_id = release["model"]["artifact_id"]
    assert release["reproducibility"]["artifacts"][model_id] == {
        "deterministic": True,
        "device": "cpu",
        "tolerances": None,
    }
    meta = card_metadata((bundle / "model" / "README.md").read_text())
    assert meta["pipeline_tag"] == "text-generation"
    value = meta["model-index"][0]["results"][0]["metrics"][0]
    assert value == {"type": "perplexity", "name": "perplexity", "value": 12.5}
    assert "too_short" in (bundle / "model" / "README.md").read_text()


def test_source_archive_holds_the_recorded_package_files_and_is_byte_identical_when_rewritten(tmp_path):
    files = source_files()
    first = release_mod.write_source_archive(tmp_path / "a.tar.gz", files)
    release_mod.write_source_archive(tmp_path / "b.tar.gz", files)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        names = archive.getnames()
        loop = archive.extractfile("lmforge/training/loop.py")
        assert loop is not None and sha256_bytes(loop.read()) == files["training/loop.py"]
    assert len(names) == first["num_files"] and "pyproject.toml" in names
    assert {f"lmforge/{name}" for name in files} <= set(names)
    # The package under lmforge/ only (real files), no untracked scratch from the checkout.
    assert not any(name.startswith(("training/", "lmforge-store", ".venv")) for name in names)
    # Extracted, the archive runs as the release's code: its package hashes as the run recorded.
    import subprocess
    import sys

    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        archive.extractall(tmp_path / "src", filter="data")
    probe = "import json; from lmforge.infra.lineage import source_files; print(json.dumps(source_files()))"
    seen = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "src")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(seen.stdout) == files
    changed = {**files, "training/loop.py": "0" * 64}
    with pytest.raises(ReleaseError, match="training/loop.py does not hash as the run recorded"):
        release_mod.write_source_archive(tmp_path / "c.tar.gz", changed)


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_verify_release_names_a_changed_missing_or_added_file(run_store, tmp_path):
    store, _ = run_store
    bundle = build_release(store, "run-1", tmp_path / "bundle").path
    assert verify_release(bundle)[0][0].startswith("signature: none")
    # Where a signature is required (the CLI's default), an unsigned or stripped bundle fails.
    with pytest.raises(ReleaseError, match="not signed"):
        verify_release(bundle, require_signature=True)
    weights = bundle / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="model/model.safetensors: changed"):
        verify_release(bundle)
    weights.unlink()
    with pytest.raises(ReleaseError, match="model/model.safetensors: missing"):
        verify_release(bundle)


def test_verify_release_rejects_another_key_and_an_unsigned_bundle_when_a_key_is_given(
    run_store, key_pair, tmp_path
):
    store, _ = run_store
    signed = build_release(store, "run-1", tmp_path / "signed", sign_key=key_pair[0]).path
    _, other = generate_key_pair(tmp_path / "other")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_release(signed, other)
    (signed / "extra.txt").write_text("added later")
    with pytest.raises(ReleaseError, match="extra.txt: not listed"):
        verify_release(signed, key_pair[1])
    unsigned = build_release(store, "run-1", tmp_path / "unsigned").path
    with pytest.raises(ReleaseError, match="not signed"):
        verify_release(unsigned, key_pair[1])


def test_release_refuses_when_the_sources_differ_from_the_run(run_store, tmp_path):
    store, record = run_store
    files = dict(record["code_files"])
    files["training/loop.py"] = "0" * 64
    store.write_run_record("run-1", {**record, "code_files": files})
    with pytest.raises(ReleaseError, match="changed training/loop.py"):
        build_release(store, "run-1", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_release_refuses_unfinished_runs_partial_runs_and_used_folders(run_store, tmp_path):
    store, record = run_store
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        build_release(store, "run-1", tmp_path / "used")
    with pytest.raises(ConfigError, match="no run 'nope'"):
        build_release(store, "nope", tmp_path / "bundle")
    store.write_run_record("run-1", {**record, "status": "failed"})
    with pytest.raises(ReleaseError, match="only a completed run"):
        build_release(store, "run-1", tmp_path / "bundle")
    store.write_run_record("run-1", {**record, "stage": "pretrain"})
    with pytest.raises(ReleaseError, match="only --stage pretrain"):
        build_release(store, "run-1", tmp_path / "bundle")


def test_a_crash_while_writing_leaves_no_bundle(run_store, tmp_path, monkeypatch):
    store, _ = run_store

    def crash(_bundle):
        raise RuntimeError("disk full")

    monkeypatch.setattr(release_mod, "bundle_files", crash)
    with pytest.raises(RuntimeError):
        build_release(store, "run-1", tmp_path / "bundle")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "hf-src", "store"]


# -- what reproduce checks -------------------------------------------------------------------------


def test_parse_stages_adds_what_each_stage_needs():
    assert parse_stages(None) == (None, ("clean", "tokenizer", "shard", "pretrain", "finetune", "eval"))
    assert parse_stages("shard") == ("shard", ("clean", "tokenizer", "shard"))
    assert parse_stages("eval") == ("eval", ("clean", "tokenizer", "shard", "pretrain", "eval"))
    assert parse_stages("finetune,eval")[0] is None
    with pytest.raises(ConfigError, match="--stages 'report'"):
        parse_stages("report")


def test_input_problems_name_changed_and_missing_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    records = hash_external(
        [ExternalFile("a.txt", tmp_path / "a.txt"), ExternalFile("b.txt", tmp_path / "b.txt")]
    )
    release = {
        "artifacts": [{"id": "corpus-1", "stage": "clean"}],
        "raw_inputs": [{**record, "kind": "file", "read_by": ["corpus-1"]} for record in records]
        + [
            {
                "uri": "hf://o/n@" + "a" * 40,
                "sha256": None,
                "size": None,
                "kind": "hub",
                "read_by": ["corpus-1"],
            },
            {"uri": "hf://o/latest", "sha256": None, "size": None, "kind": "hub", "read_by": ["corpus-1"]},
        ],
    }
    problems, checked = input_problems(release, tmp_path, ("clean",))
    assert len(checked) == 3 and problems == [
        "raw input hf://o/latest: a hub data set not pinned to a revision (cannot be re-read as it was)"
    ]
    (tmp_path / "a.txt").write_text("alpha!")
    (tmp_path / "b.txt").unlink()
    problems, _ = input_problems(release, tmp_path, ("clean",))
    problems = problems[:2]
    assert problems[0].startswith("raw input a.txt: changed") and problems[1].startswith(
        "raw input b.txt: missing"
    )
    # Inputs only read by stages that are not rebuilt are not checked.
    assert input_problems(release, tmp_path, ("pretrain",)) == ([], [])


def test_package_drift_lists_each_version_that_differs():
    from lmforge.infra.lineage import environment

    here = environment()
    release = {"environment": {"python": here["python"], "packages": dict(here["packages"])}}
    assert package_drift(release) == []
    release["environment"]["packages"]["torch"] = "0.0.1"
    release["environment"]["packages"].pop("pyarrow")
    drift = package_drift(release)
    assert any(item.startswith("package torch: 0.0.1 in the release") for item in drift)
    assert any(item.startswith("package pyarrow: absent in the release") for item in drift)


def test_metric_comparison_skips_timings_and_reports_the_largest_difference():
    assert is_telemetry_metric("train_seconds") and is_telemetry_metric("peak_flops_per_worker.0")
    assert not is_telemetry_metric("shots.0.mean_accuracy")
    old = {"loss": 2.0, "curve": [[1, 3.0]], "tokens_per_second": 5.0, "shots": {"0": {"acc": 0.5}}}
    assert metric_differences(old, {**old, "tokens_per_second": 9.0}) == (4, [], 0.0)
    count, differing, worst = metric_differences(old, {**old, "curve": [[1, 3.3]]})
    assert differing == ["curve.0.1"] and worst == pytest.approx(0.3 / 3.3)


def test_weight_and_file_comparison(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    for name, bump in (("a", 0.0), ("b", 0.25)):
        (tmp_path / name).mkdir()
        save_file(
            {"w": np.ones((2, 2), dtype="float32") + bump, "v": np.zeros(3, dtype="float32")},
            str(tmp_path / name / "model.safetensors"),
        )
    assert weight_difference(tmp_path / "a", tmp_path / "a") == (0.0, 2, 0)
    assert weight_difference(tmp_path / "a", tmp_path / "b") == (0.25, 2, 1)
    released = [{"path": "a.bin", "sha256": "1"}, {"path": "telemetry/speed.jsonl", "sha256": "2"}]
    assert first_file_difference(released, [{"path": "a.bin", "sha256": "1"}]) == (None, 1)
    assert first_file_difference(released, [{"path": "a.bin", "sha256": "9"}]) == ("a.bin", 1)


def test_release_json_is_plain_json_with_a_stable_schema(run_store, tmp_path):
    store, _ = run_store
    bundle = build_release(store, "run-1", tmp_path / "bundle").path
    release = json.loads((bundle / "release.json").read_text())
    assert release["schema"] == "lmforge-release/1"
    assert set(release) >= {
        "run", "stages", "model", "artifacts", "raw_inputs", "code", "environment", "hardware",
        "reproducibility", "files", "release_id",
    }  # fmt: skip
    assert release["code"]["files"] == source_files()
    assert release["hardware"]["cpu_count"] == os.cpu_count()


def test_compare_run_pairs_stages_by_name_and_lists_older_ancestors_without_judging_them(run_store, tmp_path):
    from lmforge.app.release import artifact_entry
    from lmforge.app.reproduce import (
        IDENTICAL,
        OLDER_ANCESTOR,
        ReproductionPlan,
        ReproductionResult,
        compare_run,
    )

    store, record = run_store
    corpus_id = record["stages"]["clean"]["artifact_id"]
    own = artifact_entry(store.get(corpus_id), {})
    # A reused artifact's parent made by an earlier run: same stage name, another recipe.
    older = {**own, "id": "corpus-0000000000000000", "recipe_key": "0" * 64}
    release = {
        "stages": {"clean": corpus_id},
        "model": {"artifact_id": "model-none"},
        "artifacts": [older, own],
        "reproducibility": {},
    }
    plan = ReproductionPlan(tmp_path, release, None, "clean", ("clean",), [], [], "rebuild")  # type: ignore[arg-type]
    rebuilt = {"stages": {"clean": {"artifact_id": corpus_id}}}
    comparisons = compare_run(plan, store, rebuilt)
    assert [(item.released_id, item.status) for item in comparisons] == [
        (older["id"], OLDER_ANCESTOR),
        (corpus_id, IDENTICAL),
    ]
    assert ReproductionResult(plan, comparisons, 1.0, {}, "", rebuilt).ok
    # A rebuilt artifact with other content is different, naming the first differing file.
    changed = {**own, "files": [{**own["files"][0], "sha256": "f" * 64}], "content_id": "other"}
    plan.release["artifacts"] = [changed]
    (item,) = compare_run(plan, store, rebuilt)
    assert item.status == "different" and item.first_difference == own["files"][0]["path"]
    assert not ReproductionResult(plan, [item], 1.0, {}, "", rebuilt).ok


def test_hardware_drift_names_cpu_features_that_change_numerics():
    from lmforge.infra.lineage import cpu_info

    here = cpu_info().get("cpu_flags") or []
    assert hardware_drift({"hardware": {"cpu_flags": list(here)}}) == []
    assert hardware_drift({"hardware": {}}) == []  # an older release without flags: nothing to compare
    other = [flag for flag in ("avx2", "amx_bf16") if flag not in here] or ["amx_tile"]
    (item,) = hardware_drift({"hardware": {"cpu_flags": other}})
    assert item.startswith(f"hardware: the release was trained on a CPU with {', '.join(other)} of ")


def test_package_listing_does_not_depend_on_setuptools_being_imported(monkeypatch):
    """Importing setuptools appends setuptools/_vendor to sys.path; its bundled copies of platformdirs,
    jaraco.* and others must not enter (or shadow versions in) the environment a release records."""
    import importlib.metadata
    import sys

    from lmforge.infra.lineage import installed_packages

    setuptools = pytest.importorskip("setuptools")

    vendor = Path(setuptools.__file__).parent / "_vendor"
    if not any(vendor.glob("*.dist-info")):
        pytest.skip(f"this setuptools vendors no distributions under {vendor}")
    clean = [entry for entry in sys.path if "_vendor" not in Path(entry).parts]
    monkeypatch.setattr(sys, "path", clean)
    fresh_process = installed_packages()
    monkeypatch.setattr(sys, "path", [*clean, str(vendor)])
    assert any(
        "_vendor" in Path(str(dist.locate_file(""))).parts for dist in importlib.metadata.distributions()
    )
    assert installed_packages() == fresh_process
    assert fresh_process["setuptools"] == importlib.metadata.version("setuptools")
