"""Tokenize + pack + shard: lmforge's shard stage vs `datasets.map(tokenizer, num_proc=2)` + `to_parquet`.

    LMFORGE_DATA_DIR=/work/shared/data python bench/tokenize_vs_datasets.py --repeats 2

Input: the whole enwiki_extract cleaned with the demo's corpus config and the demo's BPE tokenizer,
both built once through the library (`corpus.clean_corpus`, `tokenization.train_tokenizer`) into
`--work`, or reused with `--clean-dir` and `--tokenizer`.

OURS is `tokenization.build_shards` called as the pipeline's shard step calls it, with the demo's
shard config, seed and objective packing: tokenize, split by document, pack, write the Parquet
shards and the manifest. BASELINE is what a user would write with Hugging Face `datasets`:
`Dataset.from_parquet(the clean parts)` -> `.map(tokenizer(batch["text"], add_special_tokens=False),
batched=True, num_proc=2)` with the `transformers` fast tokenizer loaded from the same directory ->
the same split and packing (lmforge's `split_of` and packer applied to the baseline's ids, so the
packing code is the same on both sides and only tokenization and I/O differ) -> one
`Dataset.to_parquet` file per split. The benchmark fails unless both sides' packed token ids are
byte-identical per split. Ray start-up and ours' first (cold) run are reported apart from the warm
runs; warm runs alternate baseline, ours. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from lmforge.app.config import PipelineConfig
from lmforge.core.configbase import load_config
from lmforge.tokenization import PACKINGS, build_shards, load_split, load_tokenizer_meta, split_of
from lmforge.tokenization.corpus_files import list_corpus_files
from lmforge.tokenization.split import SPLITS
from lmforge.training import get_objective


def shard_arguments(config: PipelineConfig) -> dict[str, Any]:
    """The packing, options and seed the pipeline's shard step derives from the config."""
    objective = get_objective(config.pretrain.objective)
    return {
        "packing": objective.packing,
        "packing_options": objective.packing_options(config.pretrain, config.shard.seq_len),
        "seed": config.seed,
    }


def build_inputs(config: PipelineConfig, data_dir: Path, work: Path) -> tuple[Path, Path, dict[str, float]]:
    """Clean the whole extract and train the demo tokenizer under `work` (reused when already there)."""
    from lmforge.corpus import clean_corpus
    from lmforge.tokenization import train_tokenizer

    corpus_dir, tokenizer_dir, seconds = work / "corpus", work / "tokenizer", {}
    if not list(corpus_dir.glob("part-*.parquet")):
        start = time.perf_counter()
        clean_corpus(common.demo_corpus_config(), data_dir, corpus_dir)
        seconds["clean"] = time.perf_counter() - start
    if not (tokenizer_dir / "tokenizer.json").exists():
        seconds["tokenizer"] = train_tokenizer(config.tokenizer, corpus_dir, tokenizer_dir)["seconds"]
    return corpus_dir, tokenizer_dir, seconds


def run_ours(
    config: PipelineConfig,
    corpus_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    tokenize_in_process: bool | None = None,
) -> dict[str, Any]:
    """build_shards as flows.steps.shard_step calls it (a local store: the corpus location is its path);
    `tokenize_in_process=False` forces the Ray Data path a cluster takes."""
    arguments = shard_arguments(config)
    build_shards(
        config.shard,
        arguments["packing"],
        corpus_dir,
        tokenizer_dir,
        output_dir,
        arguments["seed"],
        corpus_location=str(corpus_dir.resolve()),
        packing_options=arguments["packing_options"],
        tokenize_in_process=tokenize_in_process,
    )
    return {split: load_split(output_dir, split) for split in SPLITS}


def run_baseline(
    config: PipelineConfig, corpus_dir: Path, tokenizer_dir: Path, output_dir: Path
) -> dict[str, Any]:
    """The plain `datasets` way; returns the packed ids per split, read back from its Parquet files."""
    import datasets
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    files = [str(path) for path in list_corpus_files(corpus_dir)]
    # A fresh cache directory per run: a warm datasets cache would skip the Arrow conversion and the map.
    dataset = datasets.Dataset.from_parquet(files, cache_dir=str(output_dir / "hf-cache"))
    tokenized = dataset.map(
        lambda batch: tokenizer(batch["text"], add_special_tokens=False),
        batched=True,
        num_proc=2,
        remove_columns=[name for name in dataset.column_names if name != "doc_id"],
    )
    arguments = shard_arguments(config)
    special_ids = load_tokenizer_meta(tokenizer_dir)["special_ids"]
    packer_class = PACKINGS.get(arguments["packing"])
    packers = {
        split: packer_class(config.shard.seq_len, special_ids, **arguments["packing_options"])
        for split in SPLITS
    }
    pending: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for batch in tokenized.iter(batch_size=1000):
        for doc_id, ids in zip(batch["doc_id"], batch["input_ids"], strict=True):
            split = split_of(doc_id, config.shard.validation_fraction, arguments["seed"])
            if ids:  # an empty document would only add a separator (build_shards skips it too)
                pending[split].append(packers[split].add_document(ids))
    packed = {}
    for split in SPLITS:
        packers[split].finish()
        rows = np.concatenate(pending[split]) if pending[split] else np.empty((0, packers[split].seq_len))
        path = output_dir / f"{split}.parquet"
        datasets.Dataset.from_dict({"input_ids": rows}).to_parquet(str(path))
        column = pq.read_table(path).column("input_ids").combine_chunks()
        packed[split] = column.flatten().to_numpy().astype(np.int32).reshape(len(column), -1)
    return packed


def timed(side, config: PipelineConfig, corpus_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Seconds of one run into a fresh directory, and the sha256 of each split's packed int32 ids."""
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-tokenize-") as tmp:
        start = time.perf_counter()
        packed = side(config, corpus_dir, tokenizer_dir, Path(tmp))
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "num_sequences": {split: len(array) for split, array in packed.items()},
        "ids_sha256": {
            split: hashlib.sha256(np.ascontiguousarray(array, dtype=np.int32).tobytes()).hexdigest()
            for split, array in packed.items()
        },
    }


def summarize(runs: list[dict[str, Any]], num_tokens: int) -> dict[str, Any]:
    seconds = common.spread([run["seconds"] for run in runs])
    return {
        "seconds": seconds,
        "tokens_per_second": num_tokens / seconds["median"],
        "load_1min_before_after": [[run["load_1min"], run["load_1min_after"]] for run in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-bench-tokenize"), help="built inputs")
    parser.add_argument("--clean-dir", type=Path, help="a cleaned corpus to reuse (part-*.parquet)")
    parser.add_argument("--tokenizer", type=Path, help="a trained tokenizer directory to reuse")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs of each side")
    parser.add_argument(
        "--without-ray-data", action="store_true", help="skip timing ours with the Ray Data tokenize path"
    )
    common.add_load_arguments(parser)
    args = parser.parse_args()
    data_dir = common.require_data_dir()
    config = load_config(PipelineConfig, common.DEMO_CONFIG)
    built_seconds: dict[str, float] = {}
    if args.clean_dir is None or args.tokenizer is None:
        corpus_dir, tokenizer_dir, built_seconds = build_inputs(config, data_dir, args.work)
    corpus_dir, tokenizer_dir = args.clean_dir or corpus_dir, args.tokenizer or tokenizer_dir

    import ray

    common.wait_for_quiet(args.max_load, args.max_wait)
    ray_init_seconds = common.start_ray()
    ours_ray_data = functools.partial(run_ours, tokenize_in_process=False)
    ours: list[dict[str, Any]] = []
    ray_data: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    try:
        # Ray Data's actors start on its first use: that cold run is reported apart.
        cold = common.measured(lambda: timed(ours_ray_data, config, corpus_dir, tokenizer_dir), args)
        for _ in range(args.repeats):
            baseline.append(
                common.measured(lambda: timed(run_baseline, config, corpus_dir, tokenizer_dir), args)
            )
            ours.append(common.measured(lambda: timed(run_ours, config, corpus_dir, tokenizer_dir), args))
            if not args.without_ray_data:
                ray_data.append(
                    common.measured(lambda: timed(ours_ray_data, config, corpus_dir, tokenizer_dir), args)
                )
    finally:
        ray.shutdown()
    outputs = {tuple(sorted(run["ids_sha256"].items())) for run in [cold, *ours, *ray_data, *baseline]}
    if len(outputs) != 1:
        raise SystemExit(f"ours and the baseline packed different token ids: {sorted(outputs)}")
    num_tokens = sum(cold["num_sequences"].values()) * config.shard.seq_len
    ours_summary, baseline_summary = summarize(ours, num_tokens), summarize(baseline, num_tokens)
    common.emit(
        {
            "benchmark": "tokenize_vs_datasets",
            "corpus_dir": str(corpus_dir),
            "corpus_mb": sum(path.stat().st_size for path in list_corpus_files(corpus_dir)) / 1e6,
            "num_sequences": cold["num_sequences"],
            "num_packed_tokens": num_tokens,
            "identical_token_ids": True,
            "ours_build_shards": ours_summary,
            "ours_ray_data_path": summarize(ray_data, num_tokens) if ray_data else None,
            "baseline_datasets_map": baseline_summary,
            "ratio_ours_over_baseline": baseline_summary["seconds"]["median"]
            / ours_summary["seconds"]["median"],
            "ray_init_seconds": ray_init_seconds,
            "ours_ray_data_cold_run_seconds": cold["seconds"],
            "inputs_built_seconds": built_seconds,
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
