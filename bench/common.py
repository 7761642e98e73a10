"""Helpers shared by the benchmarks: data dir, load gate, machine description, spreads, JSON output.

Benchmarks import this as `common` (a script's own folder is first on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.corpus import CorpusConfig
from lmforge.infra.data_paths import DATA_DIR_ENV, default_data_dir

ENWIKI_PATTERN = "enwiki_extract/wiki_*.txt"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def require_data_dir() -> Path:
    """$LMFORGE_DATA_DIR, which benchmarks read real data from; exits with a message when unset."""
    data_dir = default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        sys.exit(f"set {DATA_DIR_ENV} to the real data directory (e.g. ../shared/data); got {data_dir}")
    return data_dir


def demo_corpus_config(pattern: str = ENWIKI_PATTERN) -> CorpusConfig:
    """The corpus section of configs/demo.yaml, its first source reading `pattern` (relative to the
    data dir; benchmarks read local data, so the source's hub fallback never applies)."""
    import yaml

    raw = yaml.safe_load(DEMO_CONFIG.read_text())["corpus"]
    raw["sources"][0]["path"] = pattern
    return CorpusConfig.model_validate(raw)


def wait_for_quiet(
    max_load: float = 1.5,
    max_wait_seconds: float = 240.0,
    poll_seconds: float = 30.0,
    load: Callable[[], float] = lambda: os.getloadavg()[0],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, float]:
    """Wait (at most `max_wait_seconds`) until the 1-minute load is at most `max_load`.

    The cores are shared with other jobs; the load seen when the measurement starts is returned
    with the result so a noisy number can be recognised as such.
    """
    waited = 0.0
    current = load()
    while current > max_load and waited < max_wait_seconds:
        step = min(poll_seconds, max_wait_seconds - waited)
        print(f"# load {current:.2f} > {max_load}; waiting {step:.0f} s", file=sys.stderr, flush=True)
        sleep(step)
        waited += step
        current = load()
    return {"load_1min": round(current, 2), "waited_seconds": waited}


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-minute load first")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for that at most")


def measured(run: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """`run()`'s result after the load gate, with the 1-minute load before and after it."""
    load = wait_for_quiet(args.max_load, args.max_wait)
    result = run()
    return {**load, "load_1min_after": round(os.getloadavg()[0], 2), **result}


def start_ray() -> float:
    """Start the local Ray runtime (as lmforge does); returns the seconds it took."""
    from lmforge.infra.ray_runtime import ensure_ray

    start = time.perf_counter()
    ensure_ray()
    return time.perf_counter() - start


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "num_cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and (max - min) / median of repeated measurements."""
    if not values:
        raise ValueError("spread of no measurements")
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "relative_spread": (max(values) - min(values)) / median if median else 0.0,
    }


def rounded(record: Any, digits: int = 4) -> Any:
    """`record` with floats rounded to `digits` significant digits, for readable JSON lines."""
    if isinstance(record, float):
        return float(f"{record:.{digits}g}")
    if isinstance(record, dict):
        return {key: rounded(value, digits) for key, value in record.items()}
    if isinstance(record, list | tuple):
        return [rounded(value, digits) for value in record]
    return record


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout: the benchmark's machine-readable result."""
    print(json.dumps(rounded(record)), flush=True)


def build_clm_data(data_dir: Path, pattern: str, work: Path, seq_len: int = 256) -> dict[str, Any]:
    """Clean `pattern`, train the demo's BPE 8192 tokenizer and pack clm shards under `work`, via the library.

    Returns the `shards` and `tokenizer` directories and the stage timings and sizes.
    """
    data = build_pretrain_data(data_dir, pattern, work, ("clm",), "bpe", seq_len)
    data["shards"] = data["shards"]["clm"]
    return data


def build_pretrain_data(
    data_dir: Path,
    pattern: str,
    work: Path,
    objectives: tuple[str, ...],
    algorithm: str,
    seq_len: int,
    vocab_size: int = 8192,
) -> dict[str, Any]:
    """Clean `pattern`, train one `algorithm` tokenizer and pack shards for each objective.

    Returns `tokenizer`, `shards` (objective -> directory), and the stage timings and sizes.
    """
    from lmforge.corpus import clean_corpus
    from lmforge.tokenization import ShardConfig, TokenizerConfig, build_shards, train_tokenizer
    from lmforge.training import PretrainConfig, get_objective

    start = time.perf_counter()
    cleaned = clean_corpus(demo_corpus_config(pattern), data_dir, work / "corpus")
    clean_seconds = time.perf_counter() - start
    tokenizer = train_tokenizer(
        TokenizerConfig(algorithm=algorithm, vocab_size=vocab_size, min_frequency=2),
        work / "corpus",
        work / "tokenizer",
    )
    shards, seconds = {}, {"clean": clean_seconds, "tokenizer": tokenizer["seconds"]}
    for objective in objectives:
        spec = get_objective(objective)
        built = build_shards(
            ShardConfig(seq_len=seq_len, validation_fraction=0.02),
            spec.packing,
            work / "corpus",
            work / "tokenizer",
            work / f"shards-{objective}",
            seed=0,
            packing_options=spec.packing_options(PretrainConfig(objective=objective), seq_len),
        )
        shards[objective] = work / f"shards-{objective}"
        seconds[f"shard_{objective}"] = built["seconds"]
    return {
        "shards": shards,
        "tokenizer": work / "tokenizer",
        "num_docs_kept": cleaned["num_kept"],
        "num_train_sequences": built["train"]["num_sequences"],
        "seconds": seconds,
    }
