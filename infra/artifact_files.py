"""What domain code needs to read and write artifact files: nothing else of lmforge's infrastructure.

Domain packages (corpus, tokenization, training, tasks) import these names from here rather than
from the store or its integrity checks, so that a stage's code identity (infra.code_identity) does
not change with the store's locking, garbage collection or fast-hash library.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmforge.core.errors import ArtifactError

# Files below data/telemetry/ describe how an artifact was made (wall-clock times, tokens/s, MFU,
# TensorBoard event files), not what it is: they are verified like every file but left out of the
# content id, so recomputing a stage on another day or machine yields the same artifact id.
TELEMETRY_DIR = "telemetry"


def digest_file(path: Path, digest: Any, chunk_size: int = 1 << 20) -> str:
    """Feed the file to `digest` (any hashlib-style object) in chunks; its hex digest."""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return str(digest.hexdigest())


def sha256_file(path: Path) -> str:
    return digest_file(path, hashlib.sha256())


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file an artifact holds; ArtifactError naming the file (and `what` it should be)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; is {Path(path).parent} {what}?") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
