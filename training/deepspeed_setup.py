"""Every DeepSpeed detail: engine config, client optimizer + schedule, checkpoints, HF export.

Import this module inside Ray workers only: importing deepspeed picks an accelerator at import time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.core.errors import ArtifactError
from lmforge.training.artifact import EXPORT_META_FILE
from lmforge.training.config import PretrainConfig
from lmforge.training.schedule import lr_lambda

# Files of a model directory that a tokenizer directory must not overwrite.
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin"}
CHECKPOINT_TAG = "latest-step"
# The loop's step in DeepSpeed's client state. Not "step": without ZeRO the optimizer shares that
# file, and its AdamW states' "step" keys are the interned literal in a straight run but separate
# strings after a resume, so pickle's memo would write the file differently for the same content.
STEP_KEY = "loop_step"


def deepspeed_config(config: PretrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON config for `config` on `world_size` data-parallel ranks in the resolved `precision`."""
    assert precision in ("fp32", "bf16", "fp16"), f"unresolved precision {precision!r}"
    ds_config: dict[str, Any] = {
        "train_batch_size": config.micro_batch_size * config.gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_clipping": config.gradient_clipping,
        "zero_optimization": {"stage": config.zero_stage},
        # We pass a torch AdamW: DeepSpeed's own "AdamW" JIT-builds FusedAdam on CPU (~40 s).
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # Our loop logs; DeepSpeed's own step prints would interleave with it.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return ds_config


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (weights, embeddings); leave biases and LayerNorm gains undecayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_process_group() -> None:
    """DeepSpeed reuses the process group Ray Train set up: it must be the backend for DeepSpeed's
    accelerator (NCCL for CUDA, gloo for CPU), or collectives fail on the wrong device's tensors."""
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    if not (dist.is_available() and dist.is_initialized()):
        return
    device = get_accelerator().device_name()
    expected, actual = ("nccl" if device == "cuda" else "gloo"), dist.get_backend()
    if actual != expected:
        raise ArtifactError(
            f"the workers' process group uses {actual!r}, but DeepSpeed runs on {device!r}, which needs "
            f"{expected!r} (the launcher's TorchConfig backend and DS_ACCELERATOR disagree)"
        )


def initialize(model: nn.Module, config: PretrainConfig, world_size: int, precision: str):
    """Wrap `model` in a DeepSpeed engine with a client AdamW and warmup + decay LambdaLR."""
    import deepspeed

    check_process_group()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
        **config.adamw_options(),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, config.max_steps, config.lr_decay, config.min_lr_ratio)
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, world_size, precision),
        dist_init_required=False,
    )
    undo_state_initialization_step(optimizer)
    return engine, optimizer, scheduler


def undo_state_initialization_step(optimizer) -> None:
    """Make DeepSpeed's ZeRO-0 bf16/fp16 optimizer start where torch's AdamW starts: at step 0.

    Without ZeRO, DeepSpeed wraps a 16-bit model's client optimizer in `FP16_UnfusedOptimizer`, whose
    constructor materialises the optimizer state by calling `step()` once on zero gradients
    (DeepSpeed 0.19.8, `initialize_optimizer_states`). AdamW counts that step: every real update
    then uses the next step's bias correction (the first one 0.74x its size at beta2 0.95), and the
    decoupled weight decay has already shrunk the fp32 master weights once. The ZeRO 1-3 optimizers
    initialise lazily and are left alone. Dropping the state lets AdamW create it on the first real
    step; the master weights are copied back from the 16-bit weights they were made from.
    """
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    optimizer.optimizer.state.clear()
    with torch.no_grad():
        for low_precision, masters in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True):
            for weights, master in zip(low_precision, masters, strict=True):
                master.copy_(weights)


def save_checkpoint(engine, directory: Path, step: int) -> None:
    """Collective: every rank writes its ZeRO shards (rank 0 also the module states) under `directory`."""
    engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, client_state={STEP_KEY: step})


def load_checkpoint(engine, directory: Path) -> int:
    """Restore engine, optimizer and schedule from `directory`; returns the step it was saved at."""
    load_path, client_state = engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
    if load_path is None:
        raise ArtifactError(f"{directory}: no DeepSpeed checkpoint with tag {CHECKPOINT_TAG!r}")
    return int(client_state.get(STEP_KEY, client_state.get("step")))  # "step": checkpoints before loop_step


def gather_fp32_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 copy of the module's weights (collective under ZeRO-3, where weights are partitioned)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {
                name: tensor.detach().float().cpu().clone() for name, tensor in module.state_dict().items()
            }
    return {name: tensor.detach().float().cpu().clone() for name, tensor in module.state_dict().items()}


def export_hf(
    engine, zero_stage: int, tokenizer_dir: Path, hf_dir: Path, is_writer: bool, metadata: dict[str, Any]
) -> None:
    """Write a `save_pretrained` fp32 model plus the tokenizer files to `hf_dir` (on the writer rank).

    The exported weights are the ones the engine computes with (bf16-rounded under bf16 training),
    so the reloaded model reproduces the engine's evaluation up to activation precision.
    """
    state = gather_fp32_state_dict(engine, zero_stage)  # every rank: collective under ZeRO-3
    if not is_writer:
        return
    module = engine.module
    fresh = type(module)(module.config)  # fp32, un-partitioned, not wrapped by DeepSpeed
    fresh.load_state_dict(state)
    hf_dir.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(hf_dir)
    for source in sorted(Path(tokenizer_dir).iterdir()):
        if source.is_file() and source.name not in MODEL_FILES:
            shutil.copy2(source, hf_dir / source.name)
    (hf_dir / EXPORT_META_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
