"""Clean-stage throughput: lmforge's Ray Data cleaning vs a serial single-process baseline.

    LMFORGE_DATA_DIR=/work/shared/data python bench/clean_throughput.py --repeats 3

OURS is `corpus.clean_corpus` (Ray Data, one read task per file, on a local Ray runtime with every
core). BASELINE is the same work in one process and a plain loop: the corpus package's own reader,
`normalize_text`, `apply_filters`, blake2b exact dedup and `PartWriter`, file by file. Both read
the 30 enwiki_extract files with the demo's corpus config; the benchmark fails unless both write
byte-identical Parquet parts. Runs alternate (baseline, ours) after one cold Ray run; Ray start-up
(`ray.init`) and the cold run (worker processes starting) are reported apart from the warm runs.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from lmforge.corpus import READERS, CorpusConfig, clean_corpus
from lmforge.corpus.filters import apply_filters
from lmforge.corpus.inputs import work_items
from lmforge.corpus.normalize import normalize_text
from lmforge.corpus.stats import CleanStats
from lmforge.corpus.writer import PartWriter


def serial_clean(config: CorpusConfig, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The baseline: clean_corpus's read + normalize + filter + dedup + write, in one plain loop."""
    if config.max_documents is not None or any(source.max_documents for source in config.sources):
        raise ValueError("the serial baseline does not implement document caps")
    stats = CleanStats([source.path for source in config.sources], [f.name for f in config.filters])
    writer = PartWriter(output_dir, config.rows_per_file)
    seen_digests: set[bytes] = set()
    for item in work_items(config, data_dir):
        source = config.sources[item.source_index]
        for record in READERS.get(source.format)(item.target, source):
            text, reason, lines_removed = "", record.reason, ()
            if reason is None:
                outcome = apply_filters(
                    config.filters, normalize_text(record.text or "", config.normalization)
                )
                text, reason, lines_removed = outcome.text, outcome.reason, outcome.lines_removed
            if reason is None and config.dedup:
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if digest in seen_digests:
                    reason = "duplicate"
                seen_digests.add(digest)
            stats.count(
                item.source_index,
                reason,
                len(text) if reason is None else 0,
                record.reason is not None,
                lines_removed,
            )
            if reason is None:
                writer.add(f"{item.source_index}/{item.name}/{record.key}", source.path, text)
    writer.close()
    stats.num_output_files = writer.num_files
    return stats.as_dict()


def timed_run(clean, config: CorpusConfig, data_dir: Path) -> dict[str, Any]:
    """Seconds of one clean into a fresh directory, the counts, and the sha256 of every output file."""
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-clean-") as tmp:
        start = time.perf_counter()
        stats = clean(config, data_dir, Path(tmp))
        seconds = time.perf_counter() - start
        digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(tmp).glob("*"))]
    return {
        "seconds": seconds,
        "num_read": stats["num_read"],
        "num_kept": stats["num_kept"],
        "digests": digests,
    }


def summarize(runs: list[dict[str, Any]], input_bytes: int) -> dict[str, Any]:
    seconds = common.spread([run["seconds"] for run in runs])
    return {
        "seconds": seconds,
        "docs_per_second": runs[0]["num_read"] / seconds["median"],
        "mb_per_second": input_bytes / 1e6 / seconds["median"],
        "load_1min_before_after": [[run["load_1min"], run["load_1min_after"]] for run in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pattern", default=common.ENWIKI_PATTERN, help="input files, relative to the data dir"
    )
    parser.add_argument("--repeats", type=int, default=2, help="warm runs of each side")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    data_dir = common.require_data_dir()
    config = common.demo_corpus_config(args.pattern)
    files = [Path(item.target) for item in work_items(config, data_dir)]
    input_bytes = sum(path.stat().st_size for path in files)

    import ray

    common.wait_for_quiet(args.max_load, args.max_wait)
    ray_init_seconds = common.start_ray()
    ours: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    try:
        cold = common.measured(lambda: timed_run(clean_corpus, config, data_dir), args)
        for _ in range(args.repeats):
            baseline.append(common.measured(lambda: timed_run(serial_clean, config, data_dir), args))
            ours.append(common.measured(lambda: timed_run(clean_corpus, config, data_dir), args))
    finally:
        ray.shutdown()
    outputs = {(run["num_read"], run["num_kept"], tuple(run["digests"])) for run in [cold, *ours, *baseline]}
    if len(outputs) != 1:
        raise SystemExit(f"ours and the baseline disagree: {sorted(o[:2] for o in outputs)}")
    ours_summary, baseline_summary = summarize(ours, input_bytes), summarize(baseline, input_bytes)
    common.emit(
        {
            "benchmark": "clean_throughput",
            "num_files": len(files),
            "input_mb": input_bytes / 1e6,
            "num_read": cold["num_read"],
            "num_kept": cold["num_kept"],
            "identical_output": True,
            "ours_ray_data": ours_summary,
            "baseline_serial": baseline_summary,
            "ratio_ours_over_baseline": ours_summary["docs_per_second"] / baseline_summary["docs_per_second"],
            "ray_init_seconds": ray_init_seconds,
            "ours_cold_run_seconds": cold["seconds"],
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
