"""The demo's fine-tune/eval fan-out through Ray tasks vs the same task functions one after another.

Ours: every fine-tune cell (both inits) and every eval of configs/demo.yaml submitted together, each
stage through `flows.steps` (recipe, Ray task with its torch threads set to its CPU share, publish),
from threads as the pipeline's Prefect task runner does. Baseline: the same task functions
(`steps.finetune_on_node`, `steps.eval_on_node`) called one after another in this process with
`torch.set_num_threads(2)`. Both read one store, built first with the demo's stages up to a short
pre-training (`--pretrain-steps`; the demo's model size, so the fan-out's work is the demo's). The
outputs must be byte-identical (every file but telemetry/).

    LMFORGE_DATA_DIR=/work/shared/data python bench/fanout_vs_serial.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common

from lmforge.app.config import PipelineConfig, resolve_inputs
from lmforge.core.configbase import load_config
from lmforge.flows import steps
from lmforge.infra.progress import ProgressTarget
from lmforge.infra.stage_runner import StageOutcome
from lmforge.tasks import EVAL_TASKS, FINETUNE_TASKS

TELEMETRY = "telemetry/"


def demo_config(pretrain_steps: int, overrides: list[str]) -> PipelineConfig:
    """configs/demo.yaml on a 2-CPU local runtime with a short pre-training, then `overrides`."""
    short = [
        f"pretrain.max_steps={pretrain_steps}",
        f"pretrain.warmup_steps={max(1, pretrain_steps // 10)}",
        f"pretrain.eval_every={pretrain_steps}",
        f"pretrain.checkpoint_every={pretrain_steps}",
        "ray.num_cpus=2",
    ]
    return resolve_inputs(load_config(PipelineConfig, common.DEMO_CONFIG, [*short, *overrides]))


def build_upstream(ctx: steps.RunContext) -> tuple[StageOutcome, StageOutcome]:
    """The stages the fan-out reads (reused when the store holds them): the model and the shards."""
    cleaned = steps.clean_step(ctx)
    tokenizer = steps.tokenizer_step(ctx, cleaned)
    shards = steps.shard_step(ctx, cleaned, tokenizer)
    return steps.pretrain_step(ctx, shards, tokenizer), shards


def fan_out_plan(ctx: steps.RunContext, model: StageOutcome, shards: StageOutcome) -> list[dict[str, Any]]:
    """The pipeline's fan-out, in its submission order: per stage, the step (ours) and the task
    function with the arguments the step hands its Ray task (the baseline)."""
    config, objective = ctx.config, ctx.config.pretrain.objective
    location, data_dir = ctx.store.location, ctx.data_dir
    plan: list[dict[str, Any]] = []
    # Evaluations first, as flows.pipeline submits them (each is one long task).
    for eval_config in config.evaluation.tasks_for(objective):
        entry = EVAL_TASKS.get(eval_config.type)
        plan.append(
            {
                "stage": f"eval/{eval_config.id}",
                "step": (steps.eval_step, eval_config, model, shards),
                "call": (steps.eval_on_node, entry, location, model.artifact_id, shards.artifact_id,
                         eval_config, data_dir, config.seed),
            }
        )  # fmt: skip
    for task_config in config.finetune.tasks_for(objective):
        entry = FINETUNE_TASKS.get(task_config.type)
        for cell in task_config.cells():
            for init in steps.FINETUNE_INITS:
                stage = steps.finetune_stage(task_config, cell, init)
                plan.append(
                    {
                        "stage": stage,
                        "step": (steps.finetune_step, task_config, cell, init, model),
                        "call": (steps.finetune_on_node, entry, location, model.artifact_id, task_config,
                                 cell, init, data_dir, cell.seed(config.seed), ProgressTarget(stage)),
                    }
                )  # fmt: skip
    return plan


def run_ours(ctx: steps.RunContext, plan: list[dict[str, Any]]) -> dict[str, Any]:
    """Every stage of `plan` at once, each from its own thread; the stored files of each."""
    steps.prepare_fan_out(ctx)

    ended: dict[str, float] = {}

    def run(item: dict[str, Any]) -> StageOutcome:
        step, *args = item["step"]
        outcome = step(ctx, *args)
        ended[item["stage"]] = time.perf_counter() - start
        return outcome

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        outcomes = list(pool.map(run, plan))
    wall = time.perf_counter() - start
    for outcome in outcomes:
        if outcome.status != "completed":
            raise SystemExit(f"{outcome.stage}: {outcome.status}, expected a fresh computation")
    return {
        "seconds": wall,
        "stage_seconds": {outcome.stage: outcome.seconds for outcome in outcomes},
        # When each stage was done, from the fan-out's start: the last two show the idle tail.
        "ended_seconds": ended,
        # The task function's own time (as the baseline times it), without the Ray task around it.
        "in_task_seconds": {outcome.stage: outcome.metrics.get("seconds") for outcome in outcomes},
        "files": {o.stage: output_files(ctx.store.local_files(o.artifact_id)) for o in outcomes},
    }


def run_baseline(plan: list[dict[str, Any]], work: Path, num_threads: int) -> dict[str, Any]:
    """The same task functions one after another in this process on `num_threads` torch threads."""
    import torch

    torch.set_num_threads(num_threads)
    stage_seconds, files = {}, {}
    start = time.perf_counter()
    for item in plan:
        fn, *args = item["call"]
        began = time.perf_counter()
        output_dir = Path(tempfile.mkdtemp(prefix="serial-", dir=work))
        fn(output_dir, *args)
        stage_seconds[item["stage"]] = time.perf_counter() - began
        files[item["stage"]] = output_files(output_dir)
    return {"seconds": time.perf_counter() - start, "stage_seconds": stage_seconds, "files": files}


def output_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but its telemetry (wall-clock timings), by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not str(path.relative_to(folder)).startswith(TELEMETRY)
    }


def compare_outputs(
    ours: dict[str, dict[str, bytes]], baseline: dict[str, dict[str, bytes]]
) -> dict[str, Any]:
    """Files whose bytes differ; for JSON files, the largest relative difference of a number and the
    places where anything but a number differs (a count, a label, a missing key)."""
    differing, structural, largest = [], [], 0.0
    for stage in sorted(set(ours) | set(baseline)):
        mine, theirs = ours.get(stage, {}), baseline.get(stage, {})
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) == theirs.get(name):
                continue
            differing.append(f"{stage}/{name}")
            if name not in mine or name not in theirs or not name.endswith(".json"):
                structural.append(f"{stage}/{name}")
                continue
            gap = json_gap(json.loads(mine[name]), json.loads(theirs[name]), f"{stage}/{name}", structural)
            largest = max(largest, gap)
    return {
        "differing_files": differing,
        "non_numeric_differences": structural,
        "max_relative_difference": largest,
    }


def json_gap(a: Any, b: Any, where: str, structural: list[str]) -> float:
    """The largest |a - b| / max(|a|, |b|) over the floats of two JSON values of one shape; where
    anything else differs, `where` goes into `structural`."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return max((json_gap(a[k], b[k], f"{where}:{k}", structural) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return max((json_gap(x, y, where, structural) for x, y in zip(a, b, strict=True)), default=0.0)
    if a != b:
        structural.append(where)
    return 0.0


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lmforge.infra.ray_runtime import ensure_ray

    config = demo_config(args.pretrain_steps, args.overrides)
    ensure_ray(num_cpus=2)
    built = time.perf_counter()
    model, shards = build_upstream(steps.make_context(config, work / "store", "bench-build", None))
    build_seconds = time.perf_counter() - built
    sides: dict[str, Callable[[], dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        # Forcing "finetune" recomputes the fine-tunes and evals and reuses everything upstream.
        ctx = steps.make_context(config, work / "store", f"bench-ours-{repeat}", "finetune")
        plan = fan_out_plan(ctx, model, shards)
        sides[f"ours_{repeat}"] = functools.partial(run_ours, ctx, plan)
        sides[f"baseline_{repeat}"] = functools.partial(run_baseline, plan, work, args.baseline_threads)
    if args.single_thread_baseline:
        # The ceiling: two 1-thread tasks at once gain at most 2 / (this run's time / the 2-thread run's).
        sides["baseline_1_thread"] = functools.partial(run_baseline, plan, work, 1)
    results = {}
    for name, run in sides.items():
        load_before = os.getloadavg()[0]
        results[name] = {**run(), "load_before": load_before}
    ours = [results[f"ours_{r}"] for r in range(args.repeats)]
    baseline = [results[f"baseline_{r}"] for r in range(args.repeats)]
    comparisons = [compare_outputs(o["files"], b["files"]) for o in ours for b in baseline]
    ours_seconds = common.spread([o["seconds"] for o in ours])
    baseline_seconds = common.spread([b["seconds"] for b in baseline])
    single: dict[str, Any] = {}
    if args.single_thread_baseline:
        one = results["baseline_1_thread"]
        speedup = one["seconds"] / baseline_seconds["median"]
        single = {
            "baseline_1_thread_seconds": one["seconds"],
            f"thread_speedup_{args.baseline_threads}_vs_1": speedup,
            "fan_out_ceiling": args.baseline_threads / speedup,
            "identical_to_1_thread_baseline": not compare_outputs(ours[0]["files"], one["files"])[
                "differing_files"
            ],
            "baseline_1_thread_stage_seconds": one["stage_seconds"],
        }
    return {
        "num_stages": len(plan),
        "stages": [item["stage"] for item in plan],
        "build_seconds": build_seconds,
        "ours_seconds": ours_seconds,
        "baseline_seconds": baseline_seconds,
        "ratio": baseline_seconds["median"] / ours_seconds["median"],
        "outputs_identical": not any(c["differing_files"] for c in comparisons),
        "num_differing_files": max(len(c["differing_files"]) for c in comparisons),
        "non_numeric_differences": sorted({d for c in comparisons for d in c["non_numeric_differences"]})[
            :20
        ],
        "max_relative_difference": max(c["max_relative_difference"] for c in comparisons),
        "load_before_sides": {name: round(result["load_before"], 2) for name, result in results.items()},
        "ours_stage_seconds": ours[0]["stage_seconds"],
        "ours_in_task_seconds": ours[0]["in_task_seconds"],
        "ours_ended_seconds": ours[0]["ended_seconds"],
        "baseline_stage_seconds": baseline[0]["stage_seconds"],
        **single,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=20, help="the short pre-training's steps")
    parser.add_argument("--repeats", type=int, default=1, help="ours then baseline, this many times")
    parser.add_argument("--baseline-threads", type=int, default=2, help="torch threads of the serial run")
    parser.add_argument("--single-thread-baseline", action="store_true",
                        help="also run the serial baseline on 1 thread: the fan-out's ceiling")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a demo config override (e.g. fewer examples), as `lmforge run --set`")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="store and scratch (default: a temp dir)")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    common.require_data_dir()
    with tempfile.TemporaryDirectory(prefix="lmforge-fanout-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        result = common.measured(lambda: measure(args, work), args)
    common.emit(
        {
            "benchmark": "fanout_vs_serial",
            "machine": common.machine(),
            "pretrain_steps": args.pretrain_steps,
            "overrides": args.overrides,
            **result,
        }
    )


if __name__ == "__main__":
    main()
