"""Pre-training throughput and MFU on one CUDA GPU: GPT-2 124M (12 x d768, seq 1024, vocab 50,257, bf16).

    # once, on any machine with the data (CPU): the GPT-2-sized BPE tokenizer and 1,024-token shards
    LMFORGE_DATA_DIR=/work/shared/data python bench/gpu_pretrain.py --prepare DIR
    # on the GPU machine
    python bench/gpu_pretrain.py --data DIR --steps 60 --skip 10 --micro-batch-size 32

Runs, in this order, on the same model, data order, batch and bf16:

  plain eager        the loop a user writes by hand (`pretrain_throughput.run_baseline`): fp32
                     weights, bf16 autocast, torch's default AdamW, transformers' default attention,
                     no torch.compile
  plain tuned        the same loop with the issue's levers by hand: torch.compile of model and loss
                     head, fused AdamW (SDPA flash attention as transformers' default)
  ours               `PretrainLoop` -- the loop every Ray Train worker runs -- with the config's
                     defaults (on GPU: compile, SDPA, fused AdamW, DeepSpeed ZeRO-1 bf16), as one
                     rank in this process on an NCCL group of one. Ray itself is not started: one
                     GPU is one worker, and Ray's wheel does not fit the GPU machine's transfer limit
                     The defaults pad the vocabulary to a multiple of 64 on GPU
                     (`vocab_multiple_of: auto`, 50,257 -> 50,304)
  ours, no pad       the same with `vocab_multiple_of: 1` (the plain loops' exact vocabulary)
  ours, ZeRO 0       the same with `zero_stage: 0`
  ours, no clip      the same with `gradient_clipping: 0` (a diagnosis, not the same training)
  ours, no overflow check   DeepSpeed's `bf16.check_grad_overflow: false` (a diagnosis: with it,
                     DeepSpeed's step no longer reads "any inf/NaN?" back to the host; clipping
                     still reads whether the norm is finite)
  ours, no host reads       no overflow check and no clipping: DeepSpeed's step reads nothing back
                     (a diagnosis of where ours' host time goes, not the same training)
  plain tuned pad64  plain tuned with the vocabulary padded to a multiple of 64 (50,257 -> 50,304,
                     nanoGPT's trick, as ours' default on GPU): its loss runs over the padded
                     logits, so its losses differ slightly from the unpadded runs'
  profile-*          torch.profiler over 5 steps after `--skip` of ours and of plain tuned: host
                     seconds per phase, device-busy seconds and the top kernels (not timed runs)

Tokens/s leave out the first `--skip` steps (compilation, allocator warm-up) and all start-up, for
every run. MFU = model FLOPs per token (PaLM 6N + attention, `training.flops`) x tokens/s over
(a) the GPU's nominal dense bf16 peak (`flops.nominal_peak`) and (b) an 8192^3 bf16 matmul measured
in the same run. One JSON line per run goes to stdout (and to `--out`), a table to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lmforge.training import ModelConfig, PretrainConfig, get_objective
from lmforge.training.config import ProfileConfig
from lmforge.training.flops import measure_matmul_peak, model_flops_per_token, nominal_peak
from lmforge.training.inputs import LoopInputs, choose_precision, resolve_inputs
from lmforge.training.precision import probe_device

SEQ_LEN = 1024
GPT2_VOCAB = 50257
PLAIN_TUNED = {"compile": True, "fused": True}
PLAIN_LEVERS = {
    "plain-eager": {},
    "plain-tuned": PLAIN_TUNED,
    "plain-tuned-pad64": {**PLAIN_TUNED, "pad_vocab": 64},
}
# Changes to ours' config per run; "ours-noclip" is a diagnosis, not the same training: no gradient
# clipping (DeepSpeed still computes the norm, as `zero_optimization.compute_grad_norm` defaults to true).
OURS = {
    "ours": {},
    "ours-nopad": {"vocab_multiple_of": 1},
    "ours-zero0": {"zero_stage": 0},
    "ours-noclip": {"gradient_clipping": 0.0},
    "ours-no-overflow-check": {},
    "ours-no-host-reads": {"gradient_clipping": 0.0},
}
# Diagnoses beyond our config: keys merged into the DeepSpeed config the product builds. In bf16,
# DeepSpeed 0.19's ZeRO step reads an overflow flag (`check_overflow`) and the norm's finiteness
# (`is_invalid_grad_norm`, again inside clipping) back to the host every step; these runs remove them.
DEEPSPEED_CHANGES: dict[str, dict[str, Any]] = {
    "ours-no-overflow-check": {"bf16": {"check_grad_overflow": False}},
    "ours-no-host-reads": {"bf16": {"check_grad_overflow": False}},
}
RUNS = [*PLAIN_LEVERS, *OURS, "profile-ours", "profile-plain-tuned"]
PROFILED_STEPS = 5


class LocalRank:
    """The loop's view of a one-rank job in this process (what `RayWorkerEnv` is inside Ray Train)."""

    rank, world_size, node_id = 0, 1, None

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextlib.contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        yield None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Nothing to keep: the benchmark reads the loop's records in memory."""


def process_group(device: torch.device) -> None:
    """A one-rank process group for DeepSpeed (NCCL on CUDA, gloo on CPU), as Ray Train would set up."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        DS_ACCELERATOR="cuda" if device.type == "cuda" else "cpu",
    )  # fmt: skip
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def release(device: torch.device) -> None:
    """Free the last run's model, optimizer and compiled graphs before the next run."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextlib.contextmanager
def deepspeed_changes(changes: dict[str, dict[str, Any]]) -> Iterator[None]:
    """While open, the DeepSpeed configs the product builds get `changes` merged in (one level deep)."""
    from lmforge.training import deepspeed_setup

    original = deepspeed_setup.deepspeed_config

    def changed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        ds_config = original(*args, **kwargs)
        for key, values in changes.items():
            ds_config[key] = {**ds_config.get(key, {}), **values}
        return ds_config

    deepspeed_setup.deepspeed_config = changed
    try:
        yield
    finally:
        deepspeed_setup.deepspeed_config = original


def run_ours(
    inputs: LoopInputs, device: torch.device, skip: int, ds_changes: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    from lmforge.training.loop import PretrainLoop

    process_group(device)
    loop = PretrainLoop(inputs, LocalRank(device))
    with deepspeed_changes(ds_changes or {}):
        loop.run()
    speed = {event["step"]: event for event in loop.telemetry.of("speed")}
    first, last = speed[skip], speed[inputs.config.max_steps]
    tokens_per_second = (last["num_tokens"] - first["num_tokens"]) / (
        last["train_seconds"] - first["train_seconds"]
    )
    start = loop.telemetry.of("start")
    summary = loop.summary()
    losses = {event["step"]: event["loss"] for event in loop.metrics.of("train")}
    result = {
        "tokens_per_second": tokens_per_second,
        "flops_per_token": loop.flops_per_token,
        "num_parameters": loop.num_parameters,
        "model_vocab_size": loop.model_vocab_size,
        # What DeepSpeed's ZeRO optimizer ended up with (None for an optimizer without the check).
        "check_grad_overflow": getattr(loop.engine.optimizer, "check_grad_overflow", None),
        "loop_measured_peak": start[0]["peak_flops_per_second"] if start else None,
        # What the run's own summary (run.json) reports, from its in-loop peak and nominal peak.
        "summary": {key: value for key, value in summary.items() if "mfu" in key or "peak" in key},
        "loss_step1": losses[1],
        # Mean over steps 2..N, as the plain loop reports it.
        "loss_final": sum(losses[step] for step in range(2, inputs.config.max_steps + 1))
        / (inputs.config.max_steps - 1),
        "peak_memory_gib": peak_memory(device),
    }
    loop.engine.destroy()
    del loop
    return result


def run_plain(inputs: LoopInputs, device: torch.device, skip: int, lever: dict[str, Any]) -> dict[str, Any]:
    from pretrain_throughput import run_baseline

    result = run_baseline(inputs, 1, torch.get_num_threads(), lever=lever, device=device, skip_steps=skip)
    return {**result, "peak_memory_gib": peak_memory(device)}


def run_profile(run: str, inputs: LoopInputs, device: torch.device, skip: int) -> dict[str, Any]:
    """Per-phase host seconds, device-busy seconds and top kernels over PROFILED_STEPS after `skip`."""
    from pretrain_throughput import run_baseline

    profile = ProfileConfig(start_step=skip + 1, steps=PROFILED_STEPS)
    if run == "profile-plain-tuned":
        result = run_baseline(inputs, 1, torch.get_num_threads(), profile, PLAIN_TUNED, device, skip)
        return {"profile": result["profile"][0]}
    from lmforge.training.loop import PretrainLoop

    process_group(device)
    steps = skip + PROFILED_STEPS
    config = inputs.config.model_copy(update={"profile": profile, "max_steps": steps, "log_every": steps})
    loop = PretrainLoop(dataclasses.replace(inputs, config=config), LocalRank(device))
    loop.run()
    breakdown = loop.telemetry.of("profile")[0]["ranks"][0]
    loop.engine.destroy()
    return {"profile": breakdown}


def config_for(args: argparse.Namespace, **change: Any) -> PretrainConfig:
    steps = args.steps
    return PretrainConfig.model_validate(
        {
            "objective": "clm",
            "model": ModelConfig(size=args.size),
            "num_workers": 1,
            "use_gpu": args.device == "cuda",
            "precision": "bf16",
            "micro_batch_size": args.micro_batch_size,
            "learning_rate": 6e-4,
            "warmup_steps": min(10, steps),
            "max_steps": steps,
            "log_every": args.skip,  # speed records at step `skip` and the last step (a multiple)
            "eval_every": 10 * steps,  # only the final evaluation, after the timed window
            "eval_batches": 1,
            "loggers": (),
            **change,
        }
    )


def prepare(target: Path, pattern: str, vocab_size: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import common

    target.mkdir(parents=True, exist_ok=True)
    data = common.build_pretrain_data(
        common.require_data_dir(), pattern, target, ("clm",), "bpe", SEQ_LEN, vocab_size
    )
    print(json.dumps({key: str(value) for key, value in data.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepare", type=Path, help="build tokenizer and shards into this folder, then exit")
    parser.add_argument("--pattern", default="enwiki_extract/wiki_0[0-9].txt", help="--prepare's input")
    parser.add_argument("--vocab-size", type=int, default=GPT2_VOCAB, help="--prepare's tokenizer size")
    parser.add_argument("--data", type=Path, help="a --prepare folder (tokenizer/ and shards-clm/)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", default="gpt2", help="model.size (gpt2: 12 x d768)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10, help="untimed first steps; divides --steps")
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument(
        "--runs", nargs="+", default=["plain-eager", "plain-tuned", "ours", "ours-nopad"], choices=RUNS,
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.pattern, args.vocab_size)
        return
    if args.data is None or args.steps % args.skip:
        parser.error("--data is required, and --skip must divide --steps")
    sys.path.insert(0, str(Path(__file__).parent))
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # what a tuned user loop sets; bf16 matmuls unaffected
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    measured_peak = measure_matmul_peak(torch.bfloat16, 2.0, device, repeats=3)
    nominal = nominal_peak(name, "bf16")
    machine = {"device": name, "torch": torch.__version__, "measured_bf16_peak": measured_peak,
               "nominal_bf16_peak": nominal}  # fmt: skip
    print(json.dumps(machine), file=sys.stderr, flush=True)
    shards, tokenizer = args.data / "shards-clm", args.data / "tokenizer"
    rows = []
    for run in args.runs:
        config = config_for(args, **OURS.get(run, {}))
        precision = choose_precision(config, lambda bf16, kind=device.type: probe_device(kind, bf16))
        inputs = resolve_inputs(config, shards, tokenizer, seed=0, precision=precision)
        started = time.perf_counter()
        try:
            if run.startswith("profile-"):
                result = run_profile(run, inputs, device, args.skip)
            elif run.startswith("ours"):
                result = run_ours(inputs, device, args.skip, DEEPSPEED_CHANGES.get(run))
            else:
                result = run_plain(inputs, device, args.skip, PLAIN_LEVERS[run])
        except Exception as error:  # one failed run must not lose the others' numbers
            result = {"error": f"{type(error).__name__}: {error}"}
        finally:
            release(device)
        result.update(run=run, wall_seconds=time.perf_counter() - started, **machine)
        result.update(steps=args.steps, skip=args.skip, tokens_per_step=args.micro_batch_size * SEQ_LEN)
        if "tokens_per_second" in result:
            if "flops_per_token" not in result:  # the plain runs: counted on the unpadded model
                result["flops_per_token"] = flops_per_token(inputs)
            flops = result["flops_per_token"]
            result["mfu_vs_measured"] = flops * result["tokens_per_second"] / measured_peak
            result["mfu_vs_nominal"] = flops * result["tokens_per_second"] / nominal if nominal else None
        rows.append(result)
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as handle:
                handle.write(line + "\n")
    print_table(rows)
    print_profiles(rows)


def flops_per_token(inputs: LoopInputs) -> int:
    """Model FLOPs per token of the objective's model (built on the CPU; the weights do not matter)."""
    model = get_objective(inputs.config.objective).build_model(
        inputs.config.model, inputs.vocab_size, inputs.seq_len, inputs.special_ids
    )
    return model_flops_per_token(model, inputs.seq_len, inputs.target_length)


def print_table(rows: list[dict[str, Any]]) -> None:
    baseline = next((row for row in rows if row["run"] == "plain-eager" and "tokens_per_second" in row), None)
    print(f"{'run':<22} {'tokens/s':>10} {'x eager':>8} {'MFU meas':>9} {'MFU nom':>8} {'loss1':>7} "
          f"{'lossN':>7} {'GiB':>6}", file=sys.stderr)  # fmt: skip
    for row in rows:
        if "profile" in row:
            continue
        if "error" in row:
            print(f"{row['run']:<22} ERROR {row['error'][:200]}", file=sys.stderr)
            continue
        ratio = row["tokens_per_second"] / baseline["tokens_per_second"] if baseline else float("nan")
        nominal = row["mfu_vs_nominal"] if row["mfu_vs_nominal"] is not None else float("nan")
        memory = row["peak_memory_gib"] if row["peak_memory_gib"] is not None else float("nan")
        print(f"{row['run']:<22} {row['tokens_per_second']:>10.0f} {ratio:>8.2f} "
              f"{row['mfu_vs_measured']:>9.3f} {nominal:>8.3f} {row['loss_step1']:>7.3f} "
              f"{row['loss_final']:>7.3f} {memory:>6.1f}", file=sys.stderr)  # fmt: skip


def print_profiles(rows: list[dict[str, Any]]) -> None:
    """Host seconds per step by phase, device-busy seconds and top kernels of each profiled run (stderr)."""
    for row in rows:
        if "profile" not in row:
            continue
        profile = row["profile"]
        phases = "  ".join(f"{name} {seconds:.4f}" for name, seconds in profile["phases"].items())
        print(f"{row['run']}: step {profile['step_seconds']:.4f} s = {phases}; device busy "
              f"{profile.get('device_busy_seconds', float('nan')):.4f} s", file=sys.stderr)  # fmt: skip
        for name, seconds in (profile.get("top_kernels_device_seconds") or {}).items():
            print(f"    {seconds:.4f}  {name[:110]}", file=sys.stderr)


if __name__ == "__main__":
    main()
