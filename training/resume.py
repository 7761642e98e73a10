"""Per-rank loop state for exact resume: step, loader position, and the torch RNG state.

Saved as JSON (not a pickle) so the file's bytes depend only on the values: two identical runs write
identical files.

Only the generators that the loop draws from are recorded: torch's default generator (dropout) and,
on CUDA, the device's. Masking and shuffling use their own seeded generators. The global numpy and
Python generators are seeded at start for third-party code but are not part of the state: other
threads of the same process draw from them at times that depend on timing (Prefect's websocket
keep-alive pings call `random.getrandbits`), so their state would make identical runs differ.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.core.errors import ArtifactError

LOOP_STATE_DIR = "loop_state"


@dataclass(frozen=True)
class LoopState:
    step: int
    next_micro_batch: int
    rng: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed the global torch, numpy and Python generators (dropout uses torch's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """torch's generator states as JSON-able values (CUDA only for `device`, if CUDA)."""
    state: dict[str, Any] = {"torch": _encode(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = _encode(torch.cuda.get_rng_state(device))
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `capture_rng` (numpy/Python states that older checkpoints hold are not restored)."""
    torch.set_rng_state(_decode(state["torch"]))
    if device.type == "cuda":
        torch.cuda.set_rng_state(_decode(state["cuda"]), device)


def state_path(directory: Path, rank: int) -> Path:
    return directory / LOOP_STATE_DIR / f"rank-{rank:05d}.json"


def write_loop_state(directory: Path, rank: int, state: LoopState) -> None:
    """Each rank writes its own file, so Ray can merge the ranks' checkpoint folders."""
    path = state_path(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": state.step, "next_micro_batch": state.next_micro_batch, "rng": state.rng}
    path.write_text(json.dumps(record, sort_keys=True) + "\n")


def read_loop_state(directory: Path, rank: int) -> LoopState:
    path = state_path(directory, rank)
    try:
        record = json.loads(path.read_text())
        return LoopState(int(record["step"]), int(record["next_micro_batch"]), record["rng"])
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} is missing: was the checkpoint written with another num_workers or an older lmforge?"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: not a loop state file ({err})") from None
