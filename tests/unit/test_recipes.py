"""Recipes are right both ways: what shapes an output is in its recipe, what does not is left out."""

from __future__ import annotations

import pytest

from lmforge.core.configbase import full_view, identity_view
from lmforge.flows.steps import architecture_files
from lmforge.infra.code_identity import code_identity, import_closure, normalized_source
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore
from lmforge.training import PretrainConfig

pytestmark = pytest.mark.unit

SOURCE = '''
"""Module docstring."""
import math


def area(radius):
    """Area of a circle."""
    # the usual formula
    return math.pi * radius ** 2
'''


def test_comments_docstrings_and_layout_do_not_count():
    edited = SOURCE.replace("the usual formula", "pi r squared").replace("Area of a circle.", "Area.")
    reformatted = edited.replace("radius ** 2", "radius**2").replace('"""Module docstring."""', "")
    assert normalized_source(reformatted) == normalized_source(SOURCE)


def test_a_changed_line_of_logic_counts():
    assert normalized_source(SOURCE.replace("** 2", "** 3")) != normalized_source(SOURCE)
    assert normalized_source(SOURCE.replace("math.pi", "3.14159")) != normalized_source(SOURCE)


def test_import_closure_follows_lazy_imports_and_stays_in_its_lane():
    modules, third_party = import_closure(("lmforge.training.launcher",))
    assert "lmforge.training.loop" in modules  # imported inside the worker function
    assert "lmforge.training.objectives" in modules
    assert not any(name.startswith(("lmforge.app", "lmforge.flows", "lmforge.tasks")) for name in modules)
    assert {"torch", "deepspeed", "ray"} <= third_party
    tokenizer_modules, tokenizer_libs = import_closure(("lmforge.tokenization.train",))
    assert "lmforge.training.loop" not in tokenizer_modules and "deepspeed" not in tokenizer_libs


def test_code_identity_names_library_versions_that_matter():
    import importlib.metadata

    identity = code_identity(("lmforge.tokenization.train", "lmforge.flows.steps:tokenizer_step"))
    assert identity["libraries"]["tokenizers"] == importlib.metadata.version("tokenizers")
    assert "deepspeed" not in identity["libraries"]
    assert identity["functions"] == ["lmforge.flows.steps:tokenizer_step"]
    other_step = code_identity(("lmforge.tokenization.train", "lmforge.flows.steps:shard_step"))
    assert other_step["source_sha256"] != identity["source_sha256"]


def test_operational_fields_are_recorded_but_not_hashed():
    config = PretrainConfig(log_every=3, checkpoint_every=7, max_failures=2, cpus_per_worker=2)
    view = identity_view(config)
    for name in ("log_every", "checkpoint_every", "max_failures", "cpus_per_worker"):
        assert name not in view and name in full_view(config)
    assert view["learning_rate"] == config.learning_rate and view["model"]["size"] == "debug"


def run_stage(runner: StageRunner, config: PretrainConfig, calls: list[str]):
    def compute(out, _work):
        calls.append(runner.run_id)
        (out / "weights.txt").write_text(str(config.learning_rate))
        return {}

    return runner.run(
        "pretrain", "model", config=config, parents=[], code=("lmforge.training.config",), compute=compute
    )


def test_reuse_ignores_operational_edits_and_recomputes_on_shaping_ones(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    calls: list[str] = []
    first = run_stage(StageRunner(store, "a"), PretrainConfig(), calls)
    cadence = run_stage(StageRunner(store, "b"), PretrainConfig(log_every=1, checkpoint_every=5), calls)
    rate = run_stage(StageRunner(store, "c"), PretrainConfig(learning_rate=5e-4), calls)
    assert calls == ["a", "c"]
    assert cadence.status == "reused" and cadence.artifact_id == first.artifact_id
    assert rate.status == "completed" and rate.artifact_id != first.artifact_id
    # The manifest records the full config the artifact was made with, operational fields included.
    assert store.get(first.artifact_id)["config"]["log_every"] == PretrainConfig().log_every


def test_random_init_recipe_sees_architecture_not_weights():
    manifest = {
        "files": [
            {"path": "hf/config.json", "sha256": "c"},
            {"path": "hf/tokenizer.json", "sha256": "t"},
            {"path": "hf/model.safetensors", "sha256": "w"},
            {"path": "hf/lmforge_pretrain.json", "sha256": "steps"},
            {"path": "deepspeed/latest", "sha256": "d"},
        ]
    }
    assert architecture_files(manifest) == {"hf/config.json": "c", "hf/tokenizer.json": "t"}


def test_sibling_modules_of_a_package_do_not_count():
    """Importing tokenization.train runs tokenization/__init__, but the packer does not shape a tokenizer."""
    modules, libraries = import_closure(("lmforge.tokenization.train",))
    assert "lmforge.tokenization" in modules  # the __init__ source itself counts
    assert "lmforge.tokenization.shard" not in modules and "lmforge.tokenization.packing" not in modules
    for entry in (
        "lmforge.corpus",
        "lmforge.tokenization.shard",
        "lmforge.training.launcher",
        "lmforge.tasks.icl",
    ):
        modules, libraries = import_closure((entry,))
        assert not any(name.startswith(("lmforge.infra.store", "lmforge.infra.locks")) for name in modules)
        assert "filelock" not in libraries, entry
        # xxhash shapes the corpus (MinHash shingles, decontamination n-grams), not the others.
        assert ("xxhash" in libraries) == (entry == "lmforge.corpus"), entry


def test_an_entry_that_names_a_package_follows_what_its_init_registers():
    modules, _ = import_closure(("lmforge.corpus",))
    assert {"lmforge.corpus.wikiextractor", "lmforge.corpus.hf_reader", "lmforge.corpus.filters"} <= set(
        modules
    )


def test_an_unknown_entry_module_is_an_error_not_an_empty_closure():
    with pytest.raises(ValueError, match="no lmforge module lmforge.tokenization.nope"):
        import_closure(("lmforge.tokenization.nope",))


def test_code_identity_is_remembered_until_a_file_it_read_moves(tmp_path, monkeypatch) -> None:
    import json

    from lmforge.infra import code_identity as identity_module

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    code = ("lmforge.tokenization.train", "lmforge.flows.steps:tokenizer_step")
    identity_module._code_identity.cache_clear()
    fresh = code_identity(code)
    [record_path] = (tmp_path / identity_module.RECORDS_DIR).iterdir()
    record = json.loads(record_path.read_text())
    assert record["identity"] == fresh
    assert str(identity_module.module_path("lmforge.tokenization.train")) in record["paths"]
    assert str(identity_module.module_path("lmforge.flows.steps")) in record["paths"]

    def recomputed(code):
        raise AssertionError("recomputed")

    # A new process (the in-process cache cleared) takes the record as long as nothing moved.
    identity_module._code_identity.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(identity_module, "_computed_identity", recomputed)
        assert code_identity(code) == fresh
    # A source file whose stat differs from the record's (an edit) is read again.
    record["stats"][0][1] -= 1
    record_path.write_text(json.dumps(record))
    identity_module._code_identity.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(identity_module, "_computed_identity", recomputed)
        with pytest.raises(AssertionError, match="recomputed"):
            code_identity(code)
    # So is an installed distribution set that changed (site-packages folders' stat).
    identity_module._code_identity.cache_clear()
    assert code_identity(code) == fresh
    monkeypatch.setattr(identity_module, "_environment_key", lambda: ["another interpreter"])
    monkeypatch.setattr(identity_module, "_computed_identity", recomputed)
    identity_module._code_identity.cache_clear()
    with pytest.raises(AssertionError, match="recomputed"):
        code_identity(code)
    identity_module._code_identity.cache_clear()


def pretrain_recipe(monkeypatch, on_gpu: bool, overrides: tuple[str, ...] = ()) -> dict:
    """The pre-training stage's recipe for configs/tiny.yaml as `flows.steps.pretrain_step` builds it."""
    from pathlib import Path
    from types import SimpleNamespace

    from lmforge import training
    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import load_config
    from lmforge.flows import steps
    from lmforge.training.precision import ResolvedPrecision

    config = load_config(
        PipelineConfig, Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml", overrides
    )
    monkeypatch.setattr(training, "worker_precision", lambda _cfg: ResolvedPrecision("bf16", "test"))
    monkeypatch.setattr(training, "workers_use_gpu", lambda _cfg: on_gpu)
    seen: dict = {}
    runner = SimpleNamespace(run=lambda *_args, config, **_kwargs: seen.setdefault("recipe", config))
    ctx = SimpleNamespace(config=config, runner=runner)
    outcome = SimpleNamespace(artifact_id="parent")
    steps.pretrain_step(ctx, outcome, outcome)  # type: ignore[arg-type]
    return seen["recipe"]


def test_pretrain_recipe_holds_device_choices_resolved_not_auto(monkeypatch):
    cpu, gpu = pretrain_recipe(monkeypatch, on_gpu=False), pretrain_recipe(monkeypatch, on_gpu=True)
    assert cpu["pretrain"].compile == "auto" == gpu["pretrain"].compile  # the config as written
    assert cpu["resolved"] == {
        "precision": "bf16",
        "compile": False,
        "attention": "eager",
        "vocab_multiple_of": 1,
    }
    assert gpu["resolved"] == {
        "precision": "bf16",
        "compile": True,
        "attention": "sdpa",
        "vocab_multiple_of": 64,
    }
    assert identity_view(cpu) != identity_view(gpu)
    # Set explicitly, the choices no longer depend on the device: one recipe on both.
    fixed = ("pretrain.compile=false", "pretrain.attention=sdpa", "pretrain.vocab_multiple_of=1")
    assert identity_view(pretrain_recipe(monkeypatch, False, fixed)) == identity_view(
        pretrain_recipe(monkeypatch, True, fixed)
    )
