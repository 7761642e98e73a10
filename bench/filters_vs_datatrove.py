"""Published quality filters: lmforge's against datatrove 0.10.1's, decisions and documents/s.

    python3.11 -m venv /work/dt-venv
    /work/dt-venv/bin/pip install datatrove==0.10.1 spacy regex pydantic pyarrow pyyaml
    LMFORGE_DATA_DIR=../shared/data PYTHONPATH=. /work/dt-venv/bin/python bench/filters_vs_datatrove.py

Runs in an environment with datatrove (an optional extra, not a lmforge dependency) and lmforge's
light dependencies only: the filters import neither torch nor ray. Both sides read the same files
(the enwiki_extract WikiExtractor files and the C4 sample, one task per file, 2 workers), apply
GopherRepetition -> GopherQuality -> C4Quality with datatrove's default thresholds (FineWeb's pipeline
order), and write one small decision record per document. THEIRS is datatrove's
`LocalPipelineExecutor` with a reader step that parses the files with lmforge's own readers (so
reading costs the same); OURS is a process pool running `apply_filters`. Reported: the share of
documents whose keep/drop and first drop reason agree, the disagreements by kind with examples, the
share of kept documents whose trimmed text agrees, and documents/s of both with their ratio. Prints
one JSON line; the examples go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common

from lmforge.corpus import READERS, SourceConfig
from lmforge.corpus.c4_quality import C4Quality, FineWebQuality
from lmforge.corpus.filters import apply_filters
from lmforge.corpus.gopher_quality import GopherQuality, GopherRepetition

C4_SAMPLE = "c4_sample/sample.jsonl"
KEPT = "kept"


def read_documents(path: str) -> Any:
    """(doc id, text) of every readable record of `path`, with lmforge's reader for its format."""
    wiki = path.endswith(".txt")
    source = SourceConfig(path=path, format="wikiextractor" if wiki else "jsonl")
    for record in READERS.get(source.format)(path, source):
        if record.reason is None:
            yield f"{Path(path).name}/{record.key}", record.text or ""


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def ours_task(job: tuple[str, str, bool]) -> int:
    """Filter one file with lmforge's filters; one decision line per document. Returns the count."""
    path, output, with_fineweb = job
    filters = [
        GopherRepetition(),
        GopherQuality(),
        C4Quality(),
        *([FineWebQuality()] if with_fineweb else []),
    ]
    num_documents = 0
    with open(output, "w") as handle:
        for doc_id, text in read_documents(path):
            outcome = apply_filters(filters, text)
            decision = outcome.reason or KEPT
            handle.write(f"{doc_id}\t{decision}\t{outcome.value}\t{digest(outcome.text)}\n")
            num_documents += 1
    return num_documents


def run_ours(files: list[str], folder: Path, workers: int, with_fineweb: bool) -> float:
    start = time.perf_counter()
    jobs = [(path, str(folder / f"ours-{index:05d}.tsv"), with_fineweb) for index, path in enumerate(files)]
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(ours_task, jobs, chunksize=1)
    return time.perf_counter() - start


def run_theirs(files: list[str], folder: Path, workers: int, with_fineweb: bool) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.writers import JsonlWriter

    def excluded(label: str) -> JsonlWriter:
        return JsonlWriter(
            str(folder / "theirs-dropped"),
            output_filename=f"{label}-${{rank}}.jsonl",
            compression=None,
            adapter=lambda _, doc: {"id": doc.id, "reason": doc.metadata.get("filter_reason")},
        )

    pipeline = [
        FileReader(files),
        GopherRepetitionFilter(exclusion_writer=excluded("gopher_repetition")),
        GopherQualityFilter(exclusion_writer=excluded("gopher_quality")),
        C4QualityFilter(exclusion_writer=excluded("c4_quality")),
        *([FineWebQualityFilter(exclusion_writer=excluded("fineweb_quality"))] if with_fineweb else []),
        KeptRecorder(str(folder)),
    ]
    executor = LocalPipelineExecutor(
        pipeline, tasks=len(files), workers=workers, logging_dir=str(folder / "theirs-logs")
    )
    start = time.perf_counter()
    executor.run()
    return time.perf_counter() - start


def _datatrove_steps() -> tuple[type, type]:
    from datatrove.data import Document
    from datatrove.pipeline.base import PipelineStep

    class Reader(PipelineStep):
        name = "lmforge reader"
        type = "READER"

        def __init__(self, files: list[str]) -> None:
            super().__init__()
            self.files = files

        def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Any:
            for doc_id, text in read_documents(self.files[rank]):
                self.stat_update("documents")
                yield Document(text=text, id=doc_id)

    class Recorder(PipelineStep):
        name = "kept recorder"
        type = "WRITER"

        def __init__(self, folder: str) -> None:
            super().__init__()
            self.folder = folder

        def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Any:
            with open(f"{self.folder}/theirs-kept-{rank:05d}.tsv", "w") as handle:
                for doc in data:
                    handle.write(f"{doc.id}\t{digest(doc.text)}\n")
                    yield doc

    return Reader, Recorder


FileReader, KeptRecorder = _datatrove_steps()


def load_decisions(folder: Path) -> tuple[dict[str, tuple[str, str, str]], dict[str, tuple[str, str]]]:
    ours: dict[str, tuple[str, str, str]] = {}
    for path in sorted(folder.glob("ours-*.tsv")):
        for line in path.read_text().splitlines():
            doc_id, decision, value, text_digest = line.split("\t")
            ours[doc_id] = (decision, value, text_digest)
    theirs: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.glob("theirs-kept-*.tsv")):
        for line in path.read_text().splitlines():
            doc_id, text_digest = line.split("\t")
            theirs[doc_id] = (KEPT, text_digest)
    for path in sorted((folder / "theirs-dropped").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            theirs[record["id"]] = (record["reason"], "")
    return ours, theirs


def compare(ours: dict[str, tuple[str, str, str]], theirs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    if set(ours) != set(theirs):
        raise SystemExit(f"document sets differ: {len(set(ours) ^ set(theirs))} ids")
    kinds: Counter = Counter()
    examples: dict[str, list[str]] = {}
    num_kept_both = num_same_text = 0
    per_corpus: Counter = Counter()
    disagree_per_corpus: Counter = Counter()
    for doc_id, (decision, value, text_digest) in ours.items():
        their_decision, their_digest = theirs[doc_id]
        corpus = "c4" if doc_id.startswith(Path(C4_SAMPLE).name) else "wikipedia"
        per_corpus[corpus] += 1
        disagree_per_corpus[corpus] += decision != their_decision
        if decision == their_decision == KEPT:
            num_kept_both += 1
            num_same_text += text_digest == their_digest
        elif decision != their_decision:
            kind = f"datatrove {their_decision} / ours {decision}"
            kinds[kind] += 1
            examples.setdefault(kind, []).append(f"{doc_id} (our value {value})")
    for kind, count in kinds.most_common():
        print(f"# {count:5d}  {kind}: {', '.join(examples[kind][:3])}", file=sys.stderr)
    return {
        "num_documents": len(ours),
        "decision_agreement": 1 - sum(kinds.values()) / len(ours),
        "decision_agreement_by_corpus": {
            corpus: {"num_documents": count, "agreement": 1 - disagree_per_corpus[corpus] / count}
            for corpus, count in sorted(per_corpus.items())
        },
        "disagreements": dict(kinds.most_common()),
        "kept_text_agreement": num_same_text / num_kept_both if num_kept_both else None,
        "dropped_by_reason_theirs": dict(Counter(d for d, _ in theirs.values() if d != KEPT).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pattern", default=common.ENWIKI_PATTERN, help="Wikipedia files, under the data dir"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--with-fineweb", action="store_true", help="append FineWebQuality on both sides")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side, alternating")
    common.add_load_arguments(parser)
    args = parser.parse_args()
    data_dir = common.require_data_dir()
    files = sorted(str(path) for path in data_dir.glob(args.pattern)) + [str(data_dir / C4_SAMPLE)]
    ours_seconds: list[float] = []
    theirs_seconds: list[float] = []
    comparison: dict[str, Any] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-filters-") as tmp:
            folder = Path(tmp)
            common.wait_for_quiet(args.max_load, args.max_wait)
            theirs_seconds.append(run_theirs(files, folder, args.workers, args.with_fineweb))
            common.wait_for_quiet(args.max_load, args.max_wait)
            ours_seconds.append(run_ours(files, folder, args.workers, args.with_fineweb))
            comparison = compare(*load_decisions(folder))
    num_documents = comparison["num_documents"]
    ours_rate = num_documents / common.spread(ours_seconds)["median"]
    theirs_rate = num_documents / common.spread(theirs_seconds)["median"]
    common.emit(
        {
            "benchmark": "filters_vs_datatrove",
            "filters": ["gopher_repetition", "gopher_quality", "c4_quality"]
            + (["fineweb_quality"] if args.with_fineweb else []),
            "num_files": len(files),
            **comparison,
            "workers": args.workers,
            "ours_seconds": common.spread(ours_seconds),
            "datatrove_seconds": common.spread(theirs_seconds),
            "ours_docs_per_second": ours_rate,
            "datatrove_docs_per_second": theirs_rate,
            "ratio_ours_over_datatrove": ours_rate / theirs_rate,
            "cpu": common.cpu_model(),
            "python": sys.version.split()[0],
        }
    )


if __name__ == "__main__":
    main()
