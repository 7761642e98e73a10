"""Layout of the pre-training artifact: the files that carry its identity, and its telemetry.

Identity (deterministic: the same config, inputs and hardware give the same bytes):
    hf/                      model, tokenizer, lmforge_pretrain.json (what shaped the weights)
    deepspeed/               engine, optimizer and schedule state
    loop_state/rank-*.json   per-rank step, loader position and RNG states (exact continuation)
    metrics.jsonl            per-step train loss and lr, eval losses, token and parameter counts
Telemetry (under telemetry/, left out of the store's content id):
    telemetry/speed.jsonl    matmul peaks, tokens/s, MFU, train seconds, hosts, start and resume times,
                             each attempt's Ray node per rank (placement)
    telemetry/clock.json     train seconds so far (restored on resume)
    telemetry/tensorboard/   TensorBoard event files
    telemetry/summary.json   the dict pretrain() returns
"""

from __future__ import annotations

from typing import Any

from lmforge.core.configbase import identity_view
from lmforge.infra.artifact_files import TELEMETRY_DIR
from lmforge.training.config import PretrainConfig
from lmforge.training.objectives import get_objective
from lmforge.training.resume import LOOP_STATE_DIR

HF_DIR = "hf"
DEEPSPEED_DIR = "deepspeed"
METRICS_FILE = "metrics.jsonl"
SPEED_FILE = f"{TELEMETRY_DIR}/speed.jsonl"
CLOCK_FILE = f"{TELEMETRY_DIR}/clock.json"
TENSORBOARD_DIR = f"{TELEMETRY_DIR}/tensorboard"
SUMMARY_FILE = f"{TELEMETRY_DIR}/summary.json"
EXPORT_META_FILE = "lmforge_pretrain.json"
# What the final checkpoint hands over to the output directory.
OUTPUT_ITEMS = (HF_DIR, DEEPSPEED_DIR, LOOP_STATE_DIR, METRICS_FILE, TELEMETRY_DIR)


def model_recipe(config: PretrainConfig, precision: str) -> dict[str, Any]:
    """The config fields that shape the weights: operational ones left out, precision as resolved."""
    recipe = identity_view(config)
    recipe["precision"] = precision
    if not get_objective(config.objective).uses_masking:
        recipe.pop("masking", None)  # a causal model never reads the masking settings
    return recipe
