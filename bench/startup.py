"""Start-up: the wall time of a fully reused re-run of the demo config, from the command to its exit.

    LMFORGE_DATA_DIR=/work/shared/data python bench/startup.py --store /tmp/startup-store --runs 3
    # the same for another checkout (say a detached worktree of an older commit), into its own store:
    LMFORGE_DATA_DIR=/work/shared/data python bench/startup.py --code-root /tmp/base --store /tmp/base-store

Runs `lmforge run configs/demo.yaml` (from `--code-root`, default this checkout) once to fill the
store, or to find it filled, then times `--runs` re-runs in which every stage is reused: it fails
unless run.json says so (the report is written afresh by design). The store is filled with the
demo's stages, corpus, tokenizer and shards, but a short pre-training and a smaller fan-out
(SHORT_DEMO: the same 6 fine-tune cells and 2 evaluations, fewer steps and examples), since a
reused run's cost does not depend on how long its stages once took. Each run is a fresh process
with a fresh Prefect home and its own Prefect server, as `lmforge run` starts one. Phases come from
when each console line arrives: start -> "starting a local Prefect server" (imports, config) ->
"Prefect UI" (waiting for the server) -> "run ... completed" (the flow) -> exit (the server and
the process stopping). One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT_DEMO = (
    "pretrain.max_steps=6",
    "pretrain.warmup_steps=2",
    "pretrain.eval_every=3",
    "pretrain.eval_batches=2",
    "pretrain.checkpoint_every=6",
    "finetune.tasks.0.epochs=1",
    "finetune.tasks.0.max_dev_examples=50",
    "finetune.tasks.0.train_sizes=[64]",
    "evaluation.tasks.0.shots=[0,1]",
    "evaluation.tasks.0.max_examples=20",
    "evaluation.tasks.1.max_length=64",
    "evaluation.tasks.1.stride=64",
)
# Console lines that end each phase, in order (both before and after issue 12's changes print them).
MARKS = (
    ("imports_and_config", "starting a local Prefect server"),
    ("prefect_server_wait", "Prefect UI (while the run lasts)"),
    ("flow", " in "),  # "run <id> completed in 12 s"
)


def run_demo(code_root: Path, store: Path, run_id: str) -> dict[str, Any]:
    """One `lmforge run` of the short demo; wall seconds per phase and the run record."""
    command = [sys.executable, "-m", "lmforge.app.cli", "run", str(code_root / "configs" / "demo.yaml")]
    command += ["--store", str(store), "--run-id", run_id]
    for override in SHORT_DEMO:
        command += ["--set", override]
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with tempfile.TemporaryDirectory(prefix="lmforge-startup-home-") as home:
        env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=code_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        lines = [(time.perf_counter() - start, line.rstrip()) for line in process.stdout]
        code = process.wait()
        wall = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"lmforge run exited with code {code}:\n{tail}")
    record = json.loads((store / "runs" / run_id / "run.json").read_text())
    return {"wall": wall, "phases": phases(lines, wall, run_id), "record": record}


def phases(lines: list[tuple[float, str]], wall: float, run_id: str) -> dict[str, float]:
    """Seconds of each phase, from the arrival times of the lines that end them."""
    ends: dict[str, float] = {}
    for name, text in MARKS:
        needle = f"run {run_id} completed" if name == "flow" else text
        ends[name] = next(at for at, line in lines if needle in line)
    seconds, previous = {}, 0.0
    for name, at in ends.items():
        seconds[name] = at - previous
        previous = at
    seconds["exit"] = wall - previous
    return seconds


def not_reused(record: dict[str, Any]) -> list[str]:
    """Stages of a run record that were not reused (the report is always written afresh)."""
    return [
        name for name, stage in record["stages"].items() if name != "report" and stage["status"] != "reused"
    ]


def commit_of(code_root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(code_root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(code_root), "status", "--porcelain"], capture_output=True, text=True
    )
    return result.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="artifact store (filled on the first run)")
    parser.add_argument("--code-root", type=Path, default=REPO_ROOT, help="the checkout whose lmforge runs")
    parser.add_argument("--runs", type=int, default=3, help="timed fully reused re-runs")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    common.require_data_dir()
    code_root, store = args.code_root.resolve(), args.store.resolve()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    fill = run_demo(code_root, store, f"startup-fill-{stamp}")
    print(f"# fill run: {fill['wall']:.1f} s, recomputed {not_reused(fill['record'])}", file=sys.stderr)

    def timed() -> dict[str, Any]:
        runs = []
        for number in range(args.runs):
            run = run_demo(code_root, store, f"startup-{stamp}-{number}")
            if not_reused(run["record"]):
                raise SystemExit(
                    f"run {number} recomputed {not_reused(run['record'])}: not a fully reused run"
                )
            runs.append(run)
            print(f"# run {number}: {run['wall']:.2f} s {run['phases']}", file=sys.stderr)
        walls = [run["wall"] for run in runs]
        return {
            "wall_seconds": common.spread(walls),
            "phases_seconds": {
                name: common.spread([run["phases"][name] for run in runs]) for name in runs[0]["phases"]
            },
            "flow_wall_seconds": [run["record"]["wall_seconds"] for run in runs],
            "num_stages_reused": len(runs[0]["record"]["stages"]) - 1,
        }

    result = common.measured(timed, args)
    common.emit(
        {
            "bench": "startup",
            "code": commit_of(code_root),
            "fill_seconds": fill["wall"],
            "machine": common.machine(),
            **result,
        }
    )


if __name__ == "__main__":
    main()
