"""Pre-training throughput and MFU: lmforge (DeepSpeed ZeRO-1 in Ray Train) vs a plain PyTorch loop.

    LMFORGE_DATA_DIR=/work/shared/data python bench/pretrain_throughput.py --sizes small --steps 50 --repeats 2
    # issue 12: the 23 M GPT-2 (`base`), each lever on its own, and where a step's time goes:
    LMFORGE_DATA_DIR=/work/shared/data python bench/pretrain_throughput.py --sizes base --steps 20 --levers --profile
    # the three paradigms on one Unigram tokenizer (T5 on encoder length 128):
    LMFORGE_DATA_DIR=/work/shared/data python bench/pretrain_throughput.py --objectives clm mlm span --seq-len 128

OURS is `training.pretrain` on 2 Ray Train workers x 1 CPU (ZeRO-1, micro-batch 8 each) with the
config's defaults (`--levers` adds one run per lever setting: AdamW implementation, torch.compile,
sdpa instead of eager attention, ZeRO stage 0, one 2-thread worker instead of two 1-thread ones,
and the best combination measured). BASELINE is what a user would write by hand: one
process, `torch.set_num_threads(2)`, the same model (GPT-2, BERT or T5) from `build_model` with the
same init, the same sequences in the same steps (16 per step: ours' 2 ranks stride the same
permutation), torch's default AdamW + the same warmup/cosine schedule and gradient clipping, bf16
autocast on CPU where the precision is bf16, eager. Tokens/s leave out step 1 (warm-up) and all
start-up, for both; MFU divides by a matmul peak in the training precision measured in the same run
(ours: both 1-thread workers at once, summed; baseline: 2 threads). `--profile` adds one profiled
run of each side (torch.profiler over steps 3-7; those runs are not timed) and prints seconds per
step by phase. FLOPs per token are cross-checked against torch's own counter. Shards and tokenizer
are built once from a few enwiki files (or pass --shards and --tokenizer). One JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
from torch.profiler import record_function

from lmforge.training import ModelConfig, PretrainConfig, get_objective, pretrain
from lmforge.training.artifact import METRICS_FILE, SPEED_FILE
from lmforge.training.config import ProfileConfig, pad_to_multiple
from lmforge.training.data import TrainStream, load_split
from lmforge.training.deepspeed_setup import parameter_groups
from lmforge.training.flops import counted_training_flops, measure_matmul_peak, model_flops_per_token
from lmforge.training.inputs import LoopInputs, resolve_inputs
from lmforge.training.metrics import synchronize
from lmforge.training.models import use_attention
from lmforge.training.objectives import BatchContext
from lmforge.training.profiling import PHASES, new_profiler, phase_breakdown
from lmforge.training.schedule import lr_lambda


def run_ours(config: PretrainConfig, shards: Path, tokenizer: Path, work: Path) -> dict[str, Any]:
    called = time.time()
    summary = pretrain(config, shards, tokenizer, work / "out", seed=0, work_dir=work / "ray")
    wall = time.time() - called

    def events(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (work / "out" / name).read_text().splitlines() if line.strip()]

    speed = events(SPEED_FILE)
    start = next(event for event in speed if event["event"] == "start")
    intervals = [event for event in speed if event["event"] == "speed"]
    first, last = intervals[0], intervals[-1]  # step 1 and step N (log_every = N)
    tokens_per_second = (last["num_tokens"] - first["num_tokens"]) / (
        last["train_seconds"] - first["train_seconds"]
    )
    losses = {event["step"]: event["loss"] for event in events(METRICS_FILE) if event["event"] == "train"}
    profiles = [event["ranks"] for event in speed if event["event"] == "profile"]
    if profiles:
        return {"profile": profiles[0]}
    return {
        "tokens_per_second": tokens_per_second,
        "flops_per_token": summary["flops_per_token"],
        "mfu": summary["flops_per_token"] * tokens_per_second / summary["peak_flops_per_second"],
        "peak_flops_per_second": summary["peak_flops_per_second"],
        "ray_startup_seconds": start["worker_start_time"] - called,
        "deepspeed_setup_seconds": start["ready_time"] - start["worker_start_time"] - start["peak_seconds"],
        "wall_seconds": wall,
        "precision": summary["precision"],
        "num_parameters": summary.get("num_parameters"),
        "loss_step1": losses[1],
        "loss_final": sum(losses[step] for step in range(2, last["step"] + 1)) / (last["step"] - 1),
    }


# The plain loop tuned by hand (`--plain-levers`): how far the same levers take a loop without
# DeepSpeed. Keys: attention kernel, torch.compile of model and loss, and bf16 weights (the model
# cast to bf16, AdamW fused on them, no autocast: no fp32 master copy) instead of autocast.
PLAIN_LEVERS: dict[str, dict[str, Any]] = {
    "plain, eager attention": {"attention": "eager"},
    "plain, eager attention + compile": {"attention": "eager", "compile": True},
    "plain, eager attention + compile + bf16 weights": {
        "attention": "eager",
        "compile": True,
        "bf16_weights": True,
    },
}


def run_baseline(
    inputs: LoopInputs,
    num_workers: int,
    threads: int,
    profile: ProfileConfig | None = None,
    lever: dict[str, Any] | None = None,
    device: torch.device | None = None,
    skip_steps: int = 1,
) -> dict[str, Any]:
    """The plain loop on `device` (default CPU); tokens/s over the steps after the first `skip_steps`.

    Like a loop written by hand it syncs with the device only where it reads the clock (the end of
    step `skip_steps` and of the last step), never per step.
    """
    config = inputs.config
    lever = lever or {}
    device = device or torch.device("cpu")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    train = load_split(Path(inputs.shards_dir), "train")
    objective = get_objective(config.objective)
    torch.manual_seed(inputs.seed)
    # `pad_vocab`: the model's vocabulary rounded up to a multiple (nanoGPT's 50257 -> 50304 for
    # aligned matmuls); the loss then runs over the padded logits, so losses differ slightly.
    vocab_size = pad_to_multiple(inputs.vocab_size, int(lever.get("pad_vocab", 1)))
    model = objective.build_model(config.model, vocab_size, inputs.seq_len, inputs.special_ids)
    if "attention" in lever:
        use_attention(model, lever["attention"])
    attention = model.config._attn_implementation
    bf16_weights = bool(lever.get("bf16_weights")) and inputs.precision == "bf16"
    model = model.to(device, torch.bfloat16 if bf16_weights else None)
    if lever.get("compile"):
        model.compile()
        objective.compile_loss()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
        fused=bf16_weights or lever.get("fused") or None,
    )
    schedule = lr_lambda(config.warmup_steps, config.max_steps, config.lr_decay, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stream = TrainStream(len(train), 0, 1, config.micro_batch_size * num_workers, inputs.seed)
    startup_seconds = time.perf_counter() - started
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[inputs.precision]
    peak = measure_matmul_peak(dtype, 2.0, device)
    generator = torch.Generator().manual_seed(inputs.seed)  # unused by clm; masks for mlm
    model.train()
    losses: list[torch.Tensor] = []
    profiler, profile_started, timed_from = None, 0.0, 0.0
    last_step = profile.start_step + profile.steps - 1 if profile else config.max_steps
    for step in range(1, last_step + 1):
        if profile is not None and step == profile.start_step:
            synchronize(device)
            profiler, profile_started = new_profiler(device), time.perf_counter()
            profiler.__enter__()
        with record_function(PHASES.data):
            _, indices = stream.batch(step - 1)
            context = BatchContext(
                special_ids=inputs.special_ids,
                vocab_size=inputs.vocab_size,
                config=config,
                generator=generator,
                seed=inputs.seed,
                sequence_indices=indices,
                sentinel_ids=inputs.sentinel_ids,
            )
            batch = objective.prepare_batch(train[torch.from_numpy(indices)], context)
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with record_function(PHASES.forward):
            autocast = inputs.precision == "bf16" and not bf16_weights
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = objective.training_loss(objective.forward(model, batch))
        with record_function(PHASES.backward):
            loss.backward()
        with record_function(PHASES.optimizer):
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clipping)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step == skip_steps:
            synchronize(device)
            timed_from = time.perf_counter()
    synchronize(device)
    timed_seconds = time.perf_counter() - timed_from
    if profiler is not None and profile is not None:
        wall = time.perf_counter() - profile_started
        profiler.__exit__(None, None, None)
        return {"profile": [phase_breakdown(profiler.events(), profile.steps, wall)]}
    values = torch.stack(losses).float().tolist()
    tokens_per_step = config.micro_batch_size * num_workers * inputs.seq_len
    tokens_per_second = tokens_per_step * (config.max_steps - skip_steps) / timed_seconds
    return {
        "tokens_per_second": tokens_per_second,
        "mfu": model_flops_per_token(model, inputs.seq_len, inputs.target_length) * tokens_per_second / peak,
        "peak_flops_per_second": peak,
        "startup_seconds": startup_seconds,
        "attention": attention,
        "loss_step1": values[0],
        "loss_final": sum(values[1:]) / len(values[1:]),  # mean over steps 2..N, as ours logs it
    }


def flop_check(inputs: LoopInputs) -> dict[str, Any]:
    """Analytic FLOPs per token vs torch.utils.flop_counter on one micro-batch of the same model."""
    config = inputs.config
    torch.manual_seed(inputs.seed)
    model = get_objective(config.objective).build_model(
        config.model, inputs.vocab_size, inputs.seq_len, inputs.special_ids
    )
    if inputs.target_length is not None:
        return {"skipped": "encoder-decoder: see tests/unit/test_flops_counter.py"}
    ids = torch.randint(0, inputs.vocab_size, (2, inputs.seq_len), generator=torch.Generator().manual_seed(0))
    counted = counted_training_flops(model, {"input_ids": ids}) / ids.numel()
    analytic = model_flops_per_token(model, inputs.seq_len, inputs.target_length)
    return {"analytic": analytic, "torch_flop_counter": counted, "analytic_over_counter": analytic / counted}


# Each lever on its own against the defaults (the first entry); keys are PretrainConfig fields.
LEVERS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "for-loop AdamW (torch's CPU default)": {"adamw": "for-loop"},
    "foreach AdamW": {"adamw": "foreach"},
    "torch.compile (model and loss)": {"compile": True},
    "sdpa attention (torch's CPU flash attention)": {"attention": "sdpa"},
    "ZeRO stage 0 (no optimizer-state partitioning)": {"zero_stage": 0},
    "1 worker x 2 threads (no all-reduce)": {"num_workers": 1, "cpus_per_worker": 2},
    "1 worker x 2 threads + compile": {"num_workers": 1, "cpus_per_worker": 2, "compile": True},
    "1 worker x 2 threads + compile + ZeRO 0": {
        "num_workers": 1,
        "cpus_per_worker": 2,
        "compile": True,
        "zero_stage": 0,
    },
}


def measure_size(
    args: argparse.Namespace, size: str, shards: Path, tokenizer: Path, objective: str = "clm"
) -> dict[str, Any]:
    config = PretrainConfig(
        objective=objective,
        model=ModelConfig(size=size),
        num_workers=args.workers,
        zero_stage=1,
        precision=args.precision,
        micro_batch_size=args.micro_batch_size,
        learning_rate=1e-3,
        warmup_steps=min(10, args.steps),
        max_steps=args.steps,
        log_every=args.steps,
        eval_every=args.steps,
        eval_batches=1,
    )
    inputs = resolve_inputs(config, shards, tokenizer, seed=0)
    levers = select_levers(args)
    ours: dict[str, list[dict[str, Any]]] = {name: [] for name in levers}
    baseline = []
    plain_levers = PLAIN_LEVERS if args.plain_levers else {}
    plain: dict[str, list[dict[str, Any]]] = {name: [] for name in plain_levers}
    for _ in range(args.repeats):
        baseline.append(common.measured(lambda: run_baseline(inputs, args.workers, args.workers), args))
        for name, lever in plain_levers.items():
            plain[name].append(
                common.measured(lambda: run_baseline(inputs, args.workers, args.workers, lever=lever), args)  # noqa: B023
            )
        for name, change in levers.items():
            variant = lever_config(config, change, args.micro_batch_size * args.workers)
            with tempfile.TemporaryDirectory(prefix="lmforge-bench-pretrain-") as tmp:
                run = common.measured(lambda: run_ours(variant, shards, tokenizer, Path(tmp)), args)  # noqa: B023
            ours[name].append(run)
    # The workers measure their peak while Ray Train is still starting up; the baseline's 2-thread
    # peak is taken on a quiet process, so it also gives ours an MFU against the same denominator.
    machine_peak = common.spread([run["peak_flops_per_second"] for run in baseline])["median"]
    baseline_tps = common.spread([run["tokens_per_second"] for run in baseline])
    variants = {}
    for name, runs in ours.items():
        for run in runs:
            run["mfu_vs_baseline_peak"] = run["flops_per_token"] * run["tokens_per_second"] / machine_peak
        tps = common.spread([run["tokens_per_second"] for run in runs])
        variants[name] = {
            "tokens_per_second": tps,
            "ratio_over_baseline": tps["median"] / baseline_tps["median"],
            "mfu": common.spread([run["mfu"] for run in runs]),
            "mfu_vs_baseline_peak": common.spread([run["mfu_vs_baseline_peak"] for run in runs]),
            "loss_step1": [run["loss_step1"] for run in runs],
            "loss_final": [run["loss_final"] for run in runs],
            "runs": runs,
        }
    result: dict[str, Any] = {
        "benchmark": "pretrain_throughput",
        "objective": objective,
        "size": size,
        "num_parameters": ours["defaults"][0].get("num_parameters"),
        "steps": args.steps,
        "tokens_per_step": args.micro_batch_size * args.workers * inputs.seq_len,
        "precision": inputs.precision,
        "ours_tokens_per_second": variants["defaults"]["tokens_per_second"],
        "baseline_tokens_per_second": baseline_tps,
        "ratio_ours_over_baseline": variants["defaults"]["ratio_over_baseline"],
        "ours_mfu": variants["defaults"]["mfu"],
        "baseline_mfu": common.spread([run["mfu"] for run in baseline]),
        "ours_mfu_vs_baseline_peak": variants["defaults"]["mfu_vs_baseline_peak"],
        "baseline_loss_step1": [run["loss_step1"] for run in baseline],
        "baseline_loss_final": [run["loss_final"] for run in baseline],
        "flops_per_token": flop_check(inputs),
        "ours": variants,
        "baseline_runs": baseline,
    }
    if plain:
        result["plain_levers"] = {
            name: {
                "tokens_per_second": common.spread([run["tokens_per_second"] for run in runs]),
                "ratio_over_baseline": common.spread([run["tokens_per_second"] for run in runs])["median"]
                / baseline_tps["median"],
                "mfu_vs_baseline_peak": common.spread(
                    [run["mfu"] * run["peak_flops_per_second"] / machine_peak for run in runs]
                ),
                "loss_step1": [run["loss_step1"] for run in runs],
                "loss_final": [run["loss_final"] for run in runs],
            }
            for name, runs in plain.items()
        }
    if args.profile:
        profile = ProfileConfig(start_step=3, steps=5)
        profiled = config.model_copy(
            update={"profile": profile, "max_steps": 7, "log_every": 7, "eval_every": 7}
        )
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-profile-") as tmp:
            result["ours_profile"] = run_ours(profiled, shards, tokenizer, Path(tmp))["profile"]
        result["baseline_profile"] = run_baseline(inputs, args.workers, args.workers, profile)["profile"]
        print_profiles(result["ours_profile"], result["baseline_profile"])
    return result


def select_levers(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The defaults plus every lever (`--levers`) or the named ones (`--lever NAME`)."""
    if args.levers:
        return LEVERS
    unknown = [name for name in args.lever if name not in LEVERS]
    if unknown:
        known = ", ".join(repr(name) for name in LEVERS)
        raise SystemExit(f"--lever: unknown {', '.join(map(repr, unknown))}; known levers: {known}")
    return {"defaults": {}, **{name: LEVERS[name] for name in args.lever}}


def lever_config(config: PretrainConfig, change: dict[str, Any], global_batch: int) -> PretrainConfig:
    """`config` with one lever changed; fewer workers take a larger micro-batch (same global batch)."""
    workers = change.get("num_workers", config.num_workers)
    update = {**change, "micro_batch_size": global_batch // workers}
    return PretrainConfig.model_validate({**config.model_dump(), **update})


def print_profiles(ours: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> None:
    """Seconds per step by phase, one column per rank of ours and one for the baseline (stderr)."""
    columns = [(f"ours rank {rank}", profile) for rank, profile in enumerate(ours)] + [
        ("baseline", baseline[0])
    ]
    print("phase (s/step)  " + "  ".join(f"{name:>12}" for name, _ in columns), file=sys.stderr)
    for phase in ("data", "forward", "backward", "optimizer", "other"):
        cells = "  ".join(f"{profile['phases'][phase]:>12.3f}" for _, profile in columns)
        print(f"{phase:<15} {cells}", file=sys.stderr)
    cells = "  ".join(f"{profile['communication']:>12.3f}" for _, profile in columns)
    print(f"{'(of which comm)':<15} {cells}", file=sys.stderr)
    cells = "  ".join(f"{profile['step_seconds']:>12.3f}" for _, profile in columns)
    print(f"{'step':<15} {cells}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["small"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="as pretrain.precision"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int, default=8, help="per worker, as in configs/demo.yaml")
    parser.add_argument("--pattern", default="enwiki_extract/wiki_0[0-3].txt", help="data to build from")
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["clm"],
        help="objectives to measure; more than one trains one Unigram tokenizer for all (its sentinels serve span)",
    )
    parser.add_argument("--seq-len", type=int, default=256, help="model input length (span: encoder tokens)")
    parser.add_argument("--levers", action="store_true", help="one run of ours per lever setting too")
    parser.add_argument(
        "--lever",
        action="append",
        default=[],
        metavar="NAME",
        help="one lever by its LEVERS name (repeatable)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="a profiled run of each side (per-phase times)"
    )
    parser.add_argument(
        "--plain-levers", action="store_true", help="the plain loop with the levers too (PLAIN_LEVERS)"
    )
    parser.add_argument("--shards", type=Path, help="a clm shard directory (skips building data)")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer directory")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    import ray

    ray_init_seconds = common.start_ray()
    try:
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-data-") as tmp:
            tokenizer, data = args.tokenizer, {}
            shards = {"clm": args.shards} if args.shards else {}
            if not shards or tokenizer is None:
                algorithm = "bpe" if args.objectives == ["clm"] else "unigram"
                data = common.build_pretrain_data(
                    common.require_data_dir(),
                    args.pattern,
                    Path(tmp),
                    tuple(args.objectives),
                    algorithm,
                    args.seq_len,
                )
                shards, tokenizer = data.pop("shards"), data.pop("tokenizer")
            for objective in args.objectives:
                for size in args.sizes:
                    result = measure_size(args, size, shards[objective], tokenizer, objective)
                    extra = {"ray_init_seconds": ray_init_seconds, "data": data, "machine": common.machine()}
                    common.emit({**result, **extra})
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
