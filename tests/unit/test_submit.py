"""`lmforge submit` / `lmforge jobs` without a cluster: addresses, staging, environment, --stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmforge.app.cli import main
from lmforge.app.submit import JOB_CONFIG_FILE, JobRequest, job_env_vars, prepared_job
from lmforge.core.errors import ConfigError
from lmforge.infra.lineage import code_version

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = REPO_ROOT / "configs" / "tiny.yaml"
NO_CLUSTER = "http://127.0.0.1:1"  # port 1: nothing listens, the connection is refused at once


@pytest.fixture
def tiny_env(shared_data_dir, tmp_path, monkeypatch):
    """The real data directory, a store path, no dashboard address and no hub access."""
    from huggingface_hub import constants

    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("LMFORGE_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("LMFORGE_RAY_DASHBOARD", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize("command", [["jobs", "list"], ["jobs", "status", "some-job"]])
def test_no_cluster_at_address_is_one_line_exit_2_fast(command, monkeypatch, capsys):
    monkeypatch.delenv("LMFORGE_RAY_DASHBOARD", raising=False)
    start = time.monotonic()
    code = main([*command, "--address", NO_CLUSTER])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"lmforge: error: no Ray cluster at {NO_CLUSTER} ")
    assert "Jobs API unreachable" in err
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_submit_to_no_cluster_exits_2_after_config_checks(tiny_env, capsys):
    start = time.monotonic()
    code = main(["submit", str(TINY), "--address", NO_CLUSTER, "--set", "pretrain.max_steps=10"])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"no Ray cluster at {NO_CLUSTER}" in err
    assert elapsed < 30, f"took {elapsed:.1f} s"


def test_address_defaults_to_env_else_error(monkeypatch, capsys):
    monkeypatch.delenv("LMFORGE_RAY_DASHBOARD", raising=False)
    assert main(["jobs", "list"]) == 2
    assert "--address" in capsys.readouterr().err
    monkeypatch.setenv("LMFORGE_RAY_DASHBOARD", "127.0.0.1:1")  # a scheme is optional
    assert main(["jobs", "list"]) == 2
    assert f"no Ray cluster at {NO_CLUSTER}" in capsys.readouterr().err


def test_config_error_exits_2_before_contacting_the_cluster(tiny_env, capsys):
    code = main(["submit", str(TINY), "--address", NO_CLUSTER, "--set", "pretrain.lerning_rate=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "pretrain.lerning_rate" in err and "no Ray cluster" not in err


def test_bad_stage_names_option_and_choices(tiny_env, capsys):
    code = main(["submit", str(TINY), "--stage", "pretrian", "--address", NO_CLUSTER])
    err = capsys.readouterr().err
    assert code == 2
    assert "--stage 'pretrian'" in err and "clean, tokenizer, shard, pretrain, finetune, eval" in err
    assert not (tiny_env / "store").exists()


def test_stage_plan_runs_a_stage_with_what_it_needs():
    from lmforge.flows.steps import FORCEABLE_STAGES, stage_plan

    assert stage_plan(None) == (*FORCEABLE_STAGES, "report")
    assert stage_plan("clean") == ("clean",)
    assert stage_plan("shard") == ("clean", "tokenizer", "shard")
    assert stage_plan("eval") == ("clean", "tokenizer", "shard", "pretrain", "eval")
    assert "finetune" not in stage_plan("eval") and "report" not in stage_plan("finetune")


def test_submit_needs_a_store(tiny_env, monkeypatch, capsys):
    monkeypatch.delenv("LMFORGE_STORE")
    code = main(["submit", str(TINY), "--address", NO_CLUSTER])
    assert code == 2 and "--store" in capsys.readouterr().err


def test_working_dir_holds_real_package_files_and_resolved_config(tiny_env):
    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import load_config

    request = JobRequest(TINY, overrides=["pretrain.max_steps=10"], stage="shard", store="rel-store")
    with prepared_job(request) as job:
        root = job.working_dir
        for module in ("training/launcher.py", "infra/ray_runtime.py", "app/cli.py", "core/errors.py"):
            staged = root / "lmforge" / module
            assert staged.is_file() and not staged.is_symlink(), module
            assert staged.read_bytes() == (REPO_ROOT / "lmforge" / module).resolve().read_bytes()
        assert not any(path.is_symlink() for path in root.rglob("*"))
        assert not list(root.rglob("__pycache__")) and not list(root.rglob("*.pyc"))
        staged_config = load_config(PipelineConfig, root / JOB_CONFIG_FILE)
        assert staged_config.pretrain.max_steps == 10
        assert staged_config.store == str((Path.cwd() / "rel-store").resolve()) == job.store
        assert set(yaml.safe_load((root / JOB_CONFIG_FILE).read_text())) >= {"name", "corpus", "pretrain"}
        # The copy is no git checkout: the job's lineage names the commit it was staged from.
        staged_version = json.loads((root / "lmforge" / "code_version.json").read_text())
        here = code_version()
        assert staged_version == {"git_commit": here["git_commit"], "git_dirty": here["git_dirty"]}
        assert here["git_commit"] is not None
        probe = (
            "import json, lmforge; from lmforge.infra.lineage import code_version; "
            "print(json.dumps([lmforge.__file__, code_version()]))"
        )
        seen = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(root), "GIT_CEILING_DIRECTORIES": str(root.parent)},
        )
        imported_from, version = json.loads(seen.stdout)
        assert imported_from.startswith(str(root)) and version["git_commit"] == here["git_commit"]
        # The same package files, hashed where the job runs them.
        assert version["source_sha256"] == here["source_sha256"]
    assert not root.exists(), "the staging folder is removed once submitted"
    assert job.submission_id == f"lmforge-{job.run_id}" and job.run_id.startswith("tiny-")
    command = job.entrypoint.split()
    assert command[:5] == ["python", "-m", "lmforge.app.cli", "run", JOB_CONFIG_FILE]
    assert command[command.index("--store") + 1] == job.store
    assert command[command.index("--run-id") + 1] == job.run_id
    assert command[command.index("--stage") + 1] == "shard" and "--force" not in command
    assert any("every node of the cluster must see it" in note for note in job.notes)


def test_env_forwarding():
    environ = {
        "LMFORGE_DATA_DIR": "/data",
        "PREFECT_API_URL": "http://prefect:4200/api",
        "AWS_ENDPOINT_URL": "http://s3:9000",
        "AWS_ENDPOINT_URL_S3": "http://s3:9001",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "LMFORGE_STORE_OPTIONS": '{"anon": false}',
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HOME": "/root",
    }
    env = job_env_vars("s3://bucket/store", ["AWS_SECRET_ACCESS_KEY"], environ)
    assert env["LMFORGE_STORE"] == "s3://bucket/store"
    assert env["PYTHONWARNINGS"] == "ignore::DeprecationWarning"
    for name in environ.keys() - {"HOME"}:
        assert env[name] == environ[name], name
    assert "HOME" not in env
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "60", "time for a stopped run to record its cancel"
    assert "AWS_SECRET_ACCESS_KEY" not in job_env_vars("s3://bucket/store", [], environ)
    with pytest.raises(ConfigError, match="--env MISSING"):
        job_env_vars("s3://bucket/store", ["MISSING"], environ)


def test_url_store_passes_through_without_warning(tiny_env, s3_store_url):
    with prepared_job(JobRequest(TINY, store=s3_store_url)) as job:
        assert job.store == s3_store_url
        assert not any("local path" in note for note in job.notes)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("s3x://bucket/runs", "store: no filesystem for scheme 's3x'"),
        ("s3://no-such-bucket-lmforge/runs", "store: bucket 'no-such-bucket-lmforge'"),
    ],
)
def test_bad_store_url_is_a_config_error_before_submitting(tiny_env, s3_store_url, store, message):
    with pytest.raises(ConfigError, match=re.escape(message)), prepared_job(JobRequest(TINY, store=store)):
        pass


def test_ensure_ray_address_inside_a_job(monkeypatch):
    from lmforge.infra.ray_runtime import RAY_ADDRESS_ENV, RAY_JOB_ENV, cluster_address

    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a user's `ray job` setting
    assert cluster_address(None) is None, "outside a job RAY_ADDRESS does not select a cluster"
    assert cluster_address("head:6379") == "head:6379"
    monkeypatch.setenv(RAY_ADDRESS_ENV, "other:6379")
    assert cluster_address(None) == "other:6379"
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what the Jobs supervisor sets
    assert cluster_address("head:6379") == "10.0.0.1:6379"


def test_notes_for_what_means_something_else_on_the_cluster(tiny_env):
    from lmforge.app.submit import environment_notes, job_config, resolved_config

    config, _ = resolved_config(JobRequest(TINY, overrides=["ray.address=head:6379"]))
    notes = environment_notes(config, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert any("PREFECT_API_URL names 127.0.0.1" in note for note in notes)
    assert any("ray.address 'head:6379' ignored" in note for note in notes)
    assert (
        environment_notes(
            config.model_copy(update={"ray": config.ray.model_copy(update={"address": None})}), {}
        )
        == []
    )
    staged = job_config(config.model_copy(update={"data_dir": "."}), "/stores/a")
    assert staged.ray.address is None and staged.store == "/stores/a"
    assert staged.data_dir == str(Path.cwd().resolve())


def test_store_settings_reach_remote_tasks_of_a_directly_connected_driver():
    from lmforge.infra.ray_runtime import store_environment

    environ = {
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "LMFORGE_STORE_OPTIONS": "{}",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HOME": "/root",
    }
    assert store_environment(environ) == {
        name: environ[name]
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "LMFORGE_STORE_OPTIONS")
    }, "endpoint, region and options travel; credentials do not"
