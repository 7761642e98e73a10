"""Scaling with corpus size: clean, tokenize+shard and one pre-training epoch on 1x, 2x, 4x, 8x.

    LMFORGE_DATA_DIR=/work/shared/data python bench/scaling.py --sizes 1 2 4 8 \
        --work /tmp/lmforge-scaling --lock /tmp/lmforge-bench.lock --svg docs/scaling.svg

A k x corpus is k copies of the 30 `enwiki_extract` files: copy 0 is the original, copy c >= 1
shuffles the words of every line but its last (seeded by copy, file and line), so exact and MinHash
near dedup keep the copies while the per-document filters see the same words, punctuation and line
structure. Each size runs in its own subprocess (one Ray start each, timed apart), through the
library as the pipeline's steps call it: `corpus.clean_corpus` with the demo's corpus config,
`tokenization.build_shards` with the demo's shard config and ONE tokenizer (the demo's BPE 8192,
trained once on the 1x clean output, so only the data varies), and `training.pretrain` with the
demo's pretrain config, the `debug` model and `max_steps` = one epoch of the train split. An epoch on
the whole 8x corpus takes too long on 2 cores, so pre-training reads the shards of the first
`--pretrain-files` files of each copy (a fixed fraction of the k x corpus). Peak RSS of the driver is
measured per stage (VmHWM, reset between stages). Prints one JSON line per (size, stage) and, with
every size done, the table, log-log slopes and per-unit deviations; `--svg` writes the log-log plot.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

STAGES = ("clean", "shard", "pretrain", "pretrain_loop")
LINEAR_TOLERANCE = 0.15
RESULTS_FILE = "results.jsonl"
_DOC_MARKUP = re.compile(r"^(<doc[\s>]|</doc>\s*$)")


def perturb_line(line: str, copy: int, file_name: str, line_number: int) -> str:
    """`line` with its words shuffled, the last word kept last; copy 0 and markup lines unchanged.

    The last word holds the line's terminal punctuation, which the C4 and FineWeb line filters read.
    """
    if copy == 0 or _DOC_MARKUP.match(line):
        return line
    words = line.split()
    if len(words) < 3:
        return line
    head = words[:-1]
    # A str seed is hashed with SHA-512: the same copy on any machine and Python process.
    random.Random(f"{copy}/{file_name}/{line_number}").shuffle(head)
    return " ".join([*head, words[-1]])


def write_copy(source: Path, target: Path, copy: int) -> None:
    """Write copy number `copy` of the WikiExtractor file `source` to `target` (copy 0: a symlink)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy == 0:
        target.symlink_to(source.resolve())
        return
    with source.open(encoding="utf-8") as reader, target.open("w", encoding="utf-8") as writer:
        for number, line in enumerate(reader):
            writer.write(perturb_line(line.rstrip("\n"), copy, source.name, number) + "\n")


def scaled_data_dir(data_dir: Path, work: Path, size: int) -> Path:
    """A data dir holding `scaled/c<copy>-<file>` for copies 0..size-1, plus the eval sets' folders."""
    sources = sorted((data_dir / "enwiki_extract").glob("wiki_*.txt"))
    copies = work / "copies"
    for copy in range(size):
        for source in sources:
            path = copies / f"c{copy}-{source.name}"
            if not path.exists() and not path.is_symlink():
                partial = path.with_suffix(".partial")
                partial.unlink(missing_ok=True)
                write_copy(source, partial, copy)
                partial.rename(path)
    root = work / f"data-{size}x"
    shutil.rmtree(root, ignore_errors=True)
    (root / "scaled").mkdir(parents=True)
    for child in data_dir.iterdir():
        if child.name != "enwiki_extract":
            (root / child.name).symlink_to(child.resolve())
    for copy in range(size):
        for source in sources:
            (root / "scaled" / f"c{copy}-{source.name}").symlink_to(
                (copies / f"c{copy}-{source.name}").resolve()
            )
    return root


class PeakRss:
    """The driver's peak resident set per stage: VmHWM, reset between stages via /proc/self/clear_refs."""

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux, or not permitted: each reading is then the peak so far

    def read_mb(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(args: argparse.Namespace) -> None:
    """One corpus size, in this process: the child side of `--sizes`."""
    import ray
    import yaml

    from lmforge.corpus import clean_corpus
    from lmforge.tokenization import ShardConfig, TokenizerConfig, build_shards, train_tokenizer
    from lmforge.training import ModelConfig, PretrainConfig, get_objective, pretrain
    from lmforge.training.artifact import SPEED_FILE

    size, work = args.child, Path(args.work)
    digest = library_digest()
    data_dir = common.require_data_dir()
    demo = yaml.safe_load(common.DEMO_CONFIG.read_text())
    seed = demo["seed"]
    prepare_start = time.perf_counter()
    scaled = scaled_data_dir(data_dir, work, size)
    prepare_seconds = time.perf_counter() - prepare_start
    run = work / f"{size}x"
    stages = set(args.stages)
    if "clean" in stages:
        shutil.rmtree(run, ignore_errors=True)
    elif not (run / "corpus").is_dir():
        raise SystemExit(f"{run / 'corpus'}: no clean output from an earlier run; add the clean stage")
    else:  # the earlier run's clean output stays; everything after it is rebuilt
        for name in ("shards", "corpus-fraction", "shards-fraction", "model", "ray-train"):
            shutil.rmtree(run / name, ignore_errors=True)
    load = common.wait_for_quiet(args.max_load, args.max_wait)
    ray_init_seconds = common.start_ray()
    rss = PeakRss()
    records: list[dict[str, Any]] = []

    def record(stage: str, seconds: float, **extra: Any) -> None:
        records.append(
            {"size": size, "stage": stage, "seconds": seconds, "driver_peak_rss_mb": rss.read_mb(), **extra}
        )

    try:
        if "clean" in stages:
            rss.reset()
            start = time.perf_counter()
            stats = clean_corpus(
                common.demo_corpus_config("scaled/*.txt"), scaled, run / "corpus", run / "clean-work"
            )
            kept = kept_per_copy(run / "corpus")
            record(
                "clean",
                time.perf_counter() - start,
                num_read=stats["num_read"],
                num_kept=stats["num_kept"],
                kept_per_copy=kept,
                input_mb=sum(p.stat().st_size for p in (scaled / "scaled").iterdir()) / 1e6,
            )
        tokenizer = work / "tokenizer"
        if not (tokenizer / "done").exists():
            if size != 1:
                raise SystemExit("the tokenizer is trained on the 1x clean output: run size 1 first")
            trained = train_tokenizer(
                TokenizerConfig.model_validate(demo["tokenizer"]), run / "corpus", tokenizer
            )
            (tokenizer / "done").write_text(json.dumps({"seconds": trained["seconds"]}))
        pretrain_config = PretrainConfig.model_validate(demo["pretrain"]).model_copy(
            update={"model": ModelConfig(size="debug")}
        )
        objective = get_objective(pretrain_config.objective)
        shard_config = ShardConfig.model_validate(demo["shard"])

        def shard(corpus: Path, output: Path) -> dict[str, Any]:
            return build_shards(
                shard_config,
                objective.packing,
                corpus,
                tokenizer,
                output,
                seed,
                packing_options=objective.packing_options(pretrain_config, shard_config.seq_len),
            )

        if "shard" in stages:
            rss.reset()
            start = time.perf_counter()
            built = shard(run / "corpus", run / "shards")
            record(
                "shard",
                time.perf_counter() - start,
                num_train_sequences=built["train"]["num_sequences"],
                num_train_tokens=built["train"]["num_sequences"] * built["seq_len"],
            )
        if "pretrain" not in stages:
            return
        fraction = fraction_corpus(run / "corpus", run / "corpus-fraction", args.pretrain_files)
        fraction_built = shard(fraction, run / "shards-fraction")
        sequences = fraction_built["train"]["num_sequences"]
        batch = (
            pretrain_config.micro_batch_size
            * pretrain_config.num_workers
            * pretrain_config.gradient_accumulation_steps
        )
        steps = math.ceil(sequences / batch)
        config = pretrain_config.model_copy(
            update={"max_steps": steps, "warmup_steps": min(pretrain_config.warmup_steps, steps)}
        )
        rss.reset()
        called = time.time()
        pretrain(config, run / "shards-fraction", tokenizer, run / "model", seed, work_dir=run / "ray-train")
        wall = time.time() - called
        speed = [
            json.loads(line) for line in (run / "model" / SPEED_FILE).read_text().splitlines() if line.strip()
        ]
        loop_seconds = [event for event in speed if event["event"] == "speed"][-1]["train_seconds"]
        start_event = next(event for event in speed if event["event"] == "start")
        common_extra = {
            "num_train_sequences": sequences,
            "max_steps": steps,
            "pretrain_files": args.pretrain_files,
        }
        record("pretrain", wall, startup_seconds=start_event["ready_time"] - called, **common_extra)
        records.append({**records[-1], "stage": "pretrain_loop", "seconds": loop_seconds})
    finally:
        ray.shutdown()
        if records:  # the stages that finished, also when a later one failed
            shared = {
                "benchmark": "scaling",
                "library_digest": digest,
                **load,
                "load_1min_after": round(os.getloadavg()[0], 2),
                "ray_init_seconds": ray_init_seconds,
                "prepare_copies_seconds": prepare_seconds,
                # ru_maxrss restarts with each VmHWM reset: the run's driver peak is the stages' maximum.
                "driver_peak_rss_mb_all_stages": max(item["driver_peak_rss_mb"] for item in records),
                "children_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
            with (work / RESULTS_FILE).open("a") as results:
                for item in records:
                    line = {**shared, **item}
                    common.emit(line)
                    results.write(json.dumps(line) + "\n")
        shutil.rmtree(run / "model", ignore_errors=True)
        shutil.rmtree(run / "ray-train", ignore_errors=True)


def library_digest() -> str:
    """A short hash of the stage packages' sources: runs of one table must share it (the tree is shared)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in ("corpus", "tokenization", "training", "infra"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def kept_per_copy(corpus: Path) -> dict[str, int]:
    """Kept documents per copy, read from the doc ids (`<source>/c<copy>-<file>/<key>`)."""
    import pyarrow.parquet as pq

    counts: Counter[str] = Counter()
    for part in sorted(corpus.glob("part-*.parquet")):
        for doc_id in pq.read_table(part, columns=["doc_id"]).column("doc_id").to_pylist():
            counts[doc_id.split("/")[1].split("-")[0]] += 1
    return dict(sorted(counts.items(), key=lambda item: int(item[0][1:])))


def fraction_corpus(corpus: Path, target: Path, num_files: int) -> Path:
    """A corpus dir linking the clean parts that came from the first `num_files` files of every copy."""
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    wanted = {f"wiki_{number:02d}.txt" for number in range(num_files)}
    for part in sorted(corpus.glob("part-*.parquet")):
        doc_ids = pq.read_table(part, columns=["doc_id"]).column("doc_id").to_pylist()
        names = {doc_id.split("/")[1].split("-", 1)[1] for doc_id in doc_ids}
        if names and names <= wanted:
            (target / part.name).symlink_to(part.resolve())
        elif names & wanted:
            raise SystemExit(f"{part} mixes files inside and outside the fraction: {sorted(names)}")
    return target


def loglog_slope(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(size): 1 is linear."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )


def per_unit_ratios(sizes: Sequence[int], seconds: Sequence[float]) -> list[float]:
    """Seconds per unit of corpus at each size relative to the smallest size's: 1 is linear."""
    base = seconds[0] / sizes[0]
    return [time_k / size / base for size, time_k in zip(sizes, seconds, strict=True)]


def affine_fit(sizes: Sequence[int], seconds: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares `seconds = fixed + per_unit * size`: (fixed, per_unit, largest |residual| / seconds).

    A stage with a size-independent start-up is linear in its marginal cost even where the per-unit
    ratio against 1x is far below 1; the residual says whether the marginal cost itself is constant.
    """
    mean_x, mean_y = sum(sizes) / len(sizes), sum(seconds) / len(seconds)
    per_unit = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, seconds, strict=True)) / sum(
        (x - mean_x) ** 2 for x in sizes
    )
    fixed = mean_y - per_unit * mean_x
    residual = max(abs(y - fixed - per_unit * x) / y for x, y in zip(sizes, seconds, strict=True))
    return fixed, per_unit, residual


def report(work: Path, svg: Path | None) -> None:
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in (work / RESULTS_FILE).read_text().splitlines():
        item = json.loads(line)
        records[(item["stage"], item["size"])] = item  # a later run of a size replaces an earlier one
    sizes = sorted({size for _, size in records})
    print(
        "| stage | "
        + " | ".join(f"{s}x" for s in sizes)
        + " | log-log slope | per-unit time vs 1x | linear within 15% | affine fit: fixed + per 1x"
        + " | largest residual |"
    )
    print("|---|" + "---:|" * len(sizes) + "---:|---|---|---|---:|")
    series = {}
    for stage in STAGES:
        if any((stage, size) not in records for size in sizes):
            print(f"# {stage}: not measured at every size; left out")
            continue
        digests = {records[(stage, size)].get("library_digest") for size in sizes}
        if len(digests) > 1:
            print(f"# warning: the {stage} row mixes code versions {sorted(map(str, digests))}; rerun it")
        seconds = [records[(stage, size)]["seconds"] for size in sizes]
        ratios = per_unit_ratios(sizes, seconds)
        slope = loglog_slope(sizes, seconds)
        linear = all(abs(ratio - 1) <= LINEAR_TOLERANCE for ratio in ratios)
        fixed, per_unit, residual = affine_fit(sizes, seconds)
        series[stage] = seconds
        cells = " | ".join(f"{value:.1f} s" for value in seconds)
        spread = ", ".join(f"{ratio:.2f}" for ratio in ratios[1:])
        print(
            f"| {stage} | {cells} | {slope:.3f} | {spread} | {'yes' if linear else 'no'}"
            f" | {fixed:.1f} s + {per_unit:.1f} s | {residual:.1%} |"
        )
        common.emit(
            {
                "benchmark": "scaling",
                "stage": stage,
                "sizes": sizes,
                "seconds": seconds,
                "loglog_slope": slope,
                "per_unit_ratio": ratios,
                "linear_within_15pct": linear,
                "affine_fixed_seconds": fixed,
                "affine_seconds_per_1x": per_unit,
                "affine_largest_relative_residual": residual,
            }
        )
    for stage in ("clean", "shard", "pretrain"):
        if any((stage, size) not in records for size in sizes):
            continue
        rss = [records[(stage, size)]["driver_peak_rss_mb"] for size in sizes]
        print(
            f"| driver peak RSS, {stage} | "
            + " | ".join(f"{value:.0f} MB" for value in rss)
            + f" | {loglog_slope(sizes, rss):.3f} | {rss[-1] / rss[0]:.2f} (largest/smallest) | |"
        )
    if svg is not None:
        svg.parent.mkdir(parents=True, exist_ok=True)
        files = records[("pretrain", sizes[0])]["pretrain_files"]
        svg.write_text(loglog_svg(sizes, series, f"first {files} of 30 files per copy"))
        print(f"# wrote {svg}", file=sys.stderr)


def loglog_svg(sizes: list[int], series: dict[str, list[float]], pretrain_note: str) -> str:
    """A log-log line plot of seconds vs corpus size, one line per stage, with slope-1 guides."""
    width, height, left, right, top, bottom = 760, 420, 70, 270, 20, 50
    all_seconds = [value for values in series.values() for value in values]
    low, high = 10 ** math.floor(math.log10(min(all_seconds))), 10 ** math.ceil(math.log10(max(all_seconds)))

    def x(size: float) -> float:
        return left + (width - left - right) * math.log(size / sizes[0]) / math.log(sizes[-1] / sizes[0])

    def y(value: float) -> float:
        return height - bottom - (height - top - bottom) * math.log(value / low) / math.log(high / low)

    colors = {"clean": "#1f77b4", "shard": "#ff7f0e", "pretrain": "#2ca02c", "pretrain_loop": "#d62728"}
    labels = {
        "clean": "clean",
        "shard": "tokenize + shard",
        "pretrain": f"pre-train epoch, wall ({pretrain_note})",
        "pretrain_loop": "pre-train epoch, loop only",
    }
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    decade = low
    while decade <= high:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">{decade:g} s</text>')
        decade *= 10
    for size in sizes:
        parts.append(
            f'<line x1="{x(size):.1f}" x2="{x(size):.1f}" y1="{top}" y2="{height - bottom}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{x(size):.1f}" y="{height - bottom + 16}" text-anchor="middle">{size}x</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">corpus size (copies of the 31 MB extract)</text>'
    )
    for row, (stage, values) in enumerate(series.items()):
        color = colors.get(stage, "black")
        guide = [values[0] * size / sizes[0] for size in sizes]
        parts.append(_polyline(sizes, guide, x, y, color, dashed=True))
        parts.append(_polyline(sizes, values, x, y, color, dashed=False))
        parts.extend(
            f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>'
            for s, v in zip(sizes, values, strict=True)
        )
        parts.append(
            f'<text x="{width - right + 10}" y="{top + 20 + 18 * row}" fill="{color}">{labels.get(stage, stage)}</text>'
        )
    parts.append(
        f'<text x="{width - right + 10}" y="{top + 20 + 18 * len(series)}" fill="#555">dashed: linear</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _polyline(sizes: list[int], values: list[float], x: Any, y: Any, color: str, dashed: bool) -> str:
    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(sizes, values, strict=True))
    dash = ' stroke-dasharray="4 4" stroke-opacity="0.6"' if dashed else ""
    return f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'


def run_children(args: argparse.Namespace) -> None:
    """Each size in its own subprocess, holding `--lock` (if given) only while it runs."""
    for size in args.sizes:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--work",
            args.work,
            "--pretrain-files",
            str(args.pretrain_files),
            "--max-load",
            str(args.max_load),
            "--max-wait",
            str(args.max_wait),
            "--stages",
            *args.stages,
        ]
        if args.lock is None:
            subprocess.run(command, check=True)
            continue
        with open(args.lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                subprocess.run(command, check=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[1, 2, 4, 8], help="copies of the extract; 1 first"
    )
    parser.add_argument(
        "--work", default="/tmp/lmforge-scaling", help="copies, outputs, tokenizer, results.jsonl"
    )
    parser.add_argument(
        "--pretrain-files", type=int, default=2, help="pre-train on the first N files of each copy"
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=["clean", "shard", "pretrain"],
        default=["clean", "shard", "pretrain"],
        help="stages to (re)measure; without clean, each size reuses its earlier run's clean output",
    )
    parser.add_argument("--lock", help="flock this file around each size (shared machines)")
    parser.add_argument("--svg", type=Path, help="write the log-log plot here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    common.add_load_arguments(parser)
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        run_size(args)
        return
    run_children(args)
    if (
        len({json.loads(line)["size"] for line in (Path(args.work) / RESULTS_FILE).read_text().splitlines()})
        >= 2
    ):
        report(Path(args.work), args.svg)


if __name__ == "__main__":
    main()
