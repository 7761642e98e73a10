"""Diagnostic (no baseline): lmforge pre-training's throughput, MFU and matmul peak per model size.

    LMFORGE_DATA_DIR=/work/shared/data python bench/mfu_peak.py --sizes debug small
    python bench/mfu_peak.py --shards SHARDS_DIR --tokenizer TOKENIZER_DIR --sizes debug small

SHARDS_DIR / TOKENIZER_DIR are outputs of the shard and tokenizer stages (clm packing for clm); without
them, data is built from a few enwiki files. Prints one JSON object per size; start-up is split into
Ray (call to worker code) and DeepSpeed (worker code to first step, minus the fixed peak benchmark),
read from the run's telemetry/speed.jsonl. `--precision auto` (default) trains in bf16 only where the
hardware has it natively.
For ours-vs-baseline numbers use bench/pretrain_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common

from lmforge.infra.ray_runtime import ensure_ray
from lmforge.training import ModelConfig, PretrainConfig, pretrain
from lmforge.training.artifact import SPEED_FILE


def measure(args: argparse.Namespace, size: str, work: Path) -> dict:
    config = PretrainConfig(
        objective=args.objective,
        model=ModelConfig(size=size),
        num_workers=args.workers,
        zero_stage=args.zero_stage,
        precision=args.precision,
        micro_batch_size=args.micro_batch_size,
        warmup_steps=min(5, args.steps),
        max_steps=args.steps,
        log_every=max(1, args.steps // 4),
        eval_every=args.steps,
        eval_batches=2,
    )
    called = time.time()
    summary = pretrain(config, args.shards, args.tokenizer, work / size, seed=0)
    wall = time.time() - called
    telemetry = [json.loads(line) for line in (work / size / SPEED_FILE).read_text().splitlines()]
    start = next(record for record in telemetry if record["event"] == "start")
    curve = summary["loss_curve"]
    return {
        "size": size,
        "precision": summary["precision"],
        "precision_reason": summary["precision_reason"],
        "num_parameters": summary["num_parameters"],
        "flops_per_token": summary["flops_per_token"],
        "tokens_per_second": round(summary["tokens_per_second"]),
        "mfu_vs_measured_peak": round(summary["mfu_vs_measured_peak"], 4),
        "mfu_vs_nominal_peak": summary["mfu_vs_nominal_peak"],
        "peak_flops_per_second": summary["peak_flops_per_second"],
        "peak_flops_per_worker": summary["peak_flops_per_worker"],
        "peak_suspect": summary["peak_suspect"],
        "train_seconds": round(summary["train_seconds"], 2),
        "pretrain_wall_seconds": round(wall, 1),
        "ray_startup_seconds": round(start["worker_start_time"] - called, 1),
        "deepspeed_setup_seconds": round(
            start["ready_time"] - start["worker_start_time"] - start["peak_seconds"], 1
        ),
        "loss_first_last": [curve[0][1], curve[-1][1]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=Path, help="a shard directory (default: built from --pattern)")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer directory")
    parser.add_argument("--pattern", default="enwiki_extract/wiki_0[0-3].txt", help="data to build from")
    parser.add_argument("--sizes", nargs="+", default=["debug", "small"])
    parser.add_argument("--objective", default="clm")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    ensure_ray()
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        if args.shards is None or args.tokenizer is None:
            if args.objective != "clm":
                raise SystemExit("pass --shards and --tokenizer for objectives other than clm")
            data = common.build_clm_data(common.require_data_dir(), args.pattern, Path(tmp) / "data")
            args.shards, args.tokenizer = data["shards"], data["tokenizer"]
        for size in args.sizes:
            print(json.dumps(measure(args, size, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
