"""Pre-training on a 2-node Ray cluster vs one node, and what checkpointing every N steps costs.

    LMFORGE_DATA_DIR=/work/shared/data python bench/cluster_pretrain.py --steps 200 --checkpoint-every 10 --repeats 3

Every case pre-trains the same tiny-preset GPT (configs/tiny.yaml's model) on 2 Ray Train workers x
1 CPU, from the same shards, on a fresh local cluster (`ray.cluster_utils.Cluster`, real raylets):

  one-node        one node with 2 CPUs: both workers there (PACK)
  two-node        two nodes with 1 CPU each: one worker per node (STRICT_SPREAD), so gradients
                  cross nodes (loopback here) and each node runs its own raylet and object store
  two-node+ckpt   as two-node, with a DeepSpeed checkpoint every N steps reported to Ray Train

Printed: tokens/s of each (step 1, start-up, evaluation and checkpoint saves excluded), two-node /
one-node tokens/s, and the checkpoint overhead = training wall time with checkpoints / without
(start-up excluded; both save the final checkpoint), as medians over `--repeats` interleaved runs. Machine facts and CPU flags go with the JSON line. On one 2-core machine the
"nodes" share the cores, so the 2-node ratio measures Ray's cross-node overhead, not scaling.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from lmforge.training import ModelConfig, PretrainConfig, pretrain
from lmforge.training.artifact import SPEED_FILE


def config_for(args: argparse.Namespace, placement: str, checkpoint_every: int | None) -> PretrainConfig:
    return PretrainConfig(
        objective="clm",
        model=ModelConfig(size="tiny"),
        num_workers=2,
        cpus_per_worker=1,
        placement_strategy=placement,
        precision=args.precision,
        micro_batch_size=args.micro_batch_size,
        max_steps=args.steps,
        warmup_steps=min(10, args.steps),
        log_every=args.steps - 1,  # speed intervals: step 1 and the last step
        eval_every=10 * args.steps,  # no evaluation inside the timed window but the final one
        eval_batches=1,
        checkpoint_every=checkpoint_every,
        loggers=(),
    )


def run_case(
    args: argparse.Namespace, nodes: list[int], placement: str, checkpoint_every: int | None, data: dict
) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": nodes[0], "include_dashboard": False})
    for cpus in nodes[1:]:
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False)
    try:
        from lmforge.infra.ray_runtime import ensure_ray

        ensure_ray()  # our Ray Data settings on the connected runtime
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-cluster-") as tmp:
            work = Path(tmp)
            config = config_for(args, placement, checkpoint_every)
            called = time.time()
            summary = pretrain(
                config, data["shards"], data["tokenizer"], work / "out", seed=0, work_dir=work / "ray"
            )
            ended = time.time()
            speed = [
                json.loads(line)
                for line in (work / "out" / SPEED_FILE).read_text().splitlines()
                if line.strip()
            ]
    finally:
        ray.shutdown()
        cluster.shutdown()
    start = next(event for event in speed if event["event"] == "start")
    intervals = [event for event in speed if event["event"] == "speed"]
    first, last = intervals[0], intervals[-1]
    return {
        "nodes": nodes,
        "placement": placement,
        "checkpoint_every": checkpoint_every,
        "worker_nodes": len(set(summary.get("worker_nodes") or [])),
        "tokens_per_second": (last["num_tokens"] - first["num_tokens"])
        / (last["train_seconds"] - first["train_seconds"]),
        "training_wall_seconds": ended - start["ready_time"],
        "wall_seconds": ended - called,
        "precision": summary["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--pattern", default="enwiki_extract/wiki_00.txt", help="data to build shards from")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-data-") as tmp:
        common.start_ray()
        try:
            data = common.build_clm_data(common.require_data_dir(), args.pattern, Path(tmp), seq_len=128)
        finally:
            import ray

            ray.shutdown()
        cases = {
            "one_node": ([2], "PACK", None),
            "two_node": ([1, 1], "STRICT_SPREAD", None),
            "two_node_ckpt": ([1, 1], "STRICT_SPREAD", args.checkpoint_every),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved, so drifting load hits every case alike
            for name, (nodes, placement, every) in cases.items():
                run = functools.partial(run_case, args, nodes, placement, every, data)
                runs[name].append(common.measured(run, args))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    common.emit(
        {
            "benchmark": "cluster_pretrain",
            "steps": args.steps,
            "repeats": args.repeats,
            "runs": runs,
            "tokens_per_second": {
                name: common.spread([r["tokens_per_second"] for r in runs[name]]) for name in runs
            },
            "training_wall_seconds": {
                name: common.spread([r["training_wall_seconds"] for r in runs[name]]) for name in runs
            },
            "two_node_vs_one_node_tokens_per_second": median("two_node", "tokens_per_second")
            / median("one_node", "tokens_per_second"),
            "checkpoint_overhead_wall_ratio": median("two_node_ckpt", "training_wall_seconds")
            / median("two_node", "training_wall_seconds"),
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
