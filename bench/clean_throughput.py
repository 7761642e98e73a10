"""Clean-stage throughput: lmforge's clean stage on Ray tasks vs a serial single-process baseline.

    LMFORGE_DATA_DIR=/work/shared/data python bench/clean_throughput.py --repeats 3

OURS is `corpus.clean_corpus`: one Ray task per input file reads, normalizes, identifies the
language, filters, checks for evaluation text, redacts PII and writes; exact dedup (per digest
bucket) and MinHash near dedup (per band) are distributed steps of their own; a last task per file
writes its parts. BASELINE is the same work in one process and a plain loop: the corpus package's
reader, `normalize_text` and `clean_document` file by file, a set of blake2b digests for exact dedup,
`near_duplicates(..., parallel=False)` in-process, and `PartWriter`. Both read the 30 enwiki_extract
files with the demo's corpus config; the benchmark fails unless both write byte-identical Parquet
files. Runs alternate (baseline, ours) after one cold Ray run; Ray start-up (`ray.init`) and the cold
run (worker processes starting) are reported apart from the warm runs. Prints one JSON line.
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
from lmforge.corpus.clean import EXACT_DEDUP, READER, clean_document, document_key
from lmforge.corpus.decontam import build_index
from lmforge.corpus.inputs import work_items
from lmforge.corpus.langid import LanguageIdentifier
from lmforge.corpus.near_dedup import near_duplicates
from lmforge.corpus.normalize import normalize_text
from lmforge.corpus.pii import PiiRedactor
from lmforge.corpus.stats import CleanStats
from lmforge.corpus.writer import PartWriter, output_schema


def serial_clean(config: CorpusConfig, data_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The baseline: clean_corpus's steps in one plain loop (no caps, no rejected-documents sink)."""
    if config.max_documents is not None or any(source.max_documents for source in config.sources):
        raise ValueError("the serial baseline does not implement document caps")
    stats = CleanStats([source.path for source in config.sources], [f.name for f in config.filters])
    language_id = LanguageIdentifier(config.language_id) if config.language_id else None
    redactor = PiiRedactor(config.pii) if config.pii else None
    index = build_index(config.decontamination, data_dir) if config.decontamination else None
    seen_digests: set[bytes] = set()
    kept: list[tuple[int, int, dict[str, Any]]] = []  # (key, source index, output row)
    items = work_items(config, data_dir)
    for number, item in enumerate(items):
        source = config.sources[item.source_index]
        for ordinal, record in enumerate(READERS.get(source.format)(item.target, source)):
            if record.reason is not None:
                stats.count(item.source_index, record.reason, 0, True, step=READER)
                continue
            text = normalize_text(record.text or "", config.normalization)
            verdict = clean_document(text, config, language_id, index, redactor)
            reason, step = verdict.reason, verdict.step
            if reason is None and config.dedup:
                digest = hashlib.blake2b(verdict.text.encode("utf-8"), digest_size=16).digest()
                if digest in seen_digests:
                    reason, step = "duplicate", EXACT_DEDUP
                seen_digests.add(digest)
            if reason is not None:
                stats.count(item.source_index, reason, 0, False, verdict.lines_removed, step=step)
                continue
            row: dict[str, Any] = {
                "doc_id": f"{item.source_index}/{item.name}/{record.key}",
                "source": source.path,
                "text": verdict.text,
                "language": verdict.language,
                "language_score": verdict.language_score,
            }
            kept.append((document_key(number, ordinal), item.source_index, row))
            stats.count(item.source_index, None, len(verdict.text), False, verdict.lines_removed)
    near: set[int] = set()
    if config.near_dedup is not None:
        with tempfile.TemporaryDirectory() as work:
            chunk = ([key for key, _, _ in kept], [row["text"] for _, _, row in kept])
            near = set(
                near_duplicates([chunk], config.near_dedup, Path(work), parallel=False).drop_keys.tolist()
            )
    schema = output_schema(config.language_id is not None)
    writers: dict[int, PartWriter] = {}
    for key, source_index, row in kept:
        if key in near:
            counts = stats.per_source[source_index]
            counts.num_kept -= 1
            counts.dropped["near_duplicate"] += 1
            stats.num_chars_kept -= len(row["text"])
            continue
        number = key >> 32
        if number not in writers:
            writers[number] = PartWriter(output_dir, config.rows_per_file, f"part-{number:05d}", schema)
        writers[number].add(row)
    for writer in writers.values():
        writer.close()
    stats.num_output_files = sum(writer.num_files for writer in writers.values())
    return stats.as_dict()


def timed_run(clean, config: CorpusConfig, data_dir: Path) -> dict[str, Any]:
    """Seconds of one clean into a fresh directory, the counts, and the sha256 of every output file."""
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-clean-") as tmp:
        start = time.perf_counter()
        stats = clean(config, data_dir, Path(tmp))
        seconds = time.perf_counter() - start
        digests = [
            hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(tmp).rglob("*.parquet"))
        ]
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
    # The rejected-documents sink is an audit extra the baseline does not write.
    config = common.demo_corpus_config(args.pattern).model_copy(update={"rejected_documents": False})
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
            "ours_ray_tasks": ours_summary,
            "baseline_serial": baseline_summary,
            "ratio_ours_over_baseline": ours_summary["docs_per_second"] / baseline_summary["docs_per_second"],
            "ray_init_seconds": ray_init_seconds,
            "ours_cold_run_seconds": cold["seconds"],
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
