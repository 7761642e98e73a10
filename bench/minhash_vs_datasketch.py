"""MinHash near-dedup: lmforge's against datasketch's MinHashLSH on planted near-duplicates.

    /work/ds-venv/bin/python bench/minhash_vs_datasketch.py    # datasketch 2.0.0 installed there

CORPUS: the enwiki_extract documents (WikiExtractor reader, NFKC as the clean stage) with at least 50
words, plus `--num-planted` copies of seeded random documents, each with 5-10% of its words edited
(substituted, inserted or deleted with equal odds; new words drawn from the corpus). TRUTH: the
planted (original, copy) pairs, plus every other pair that either tool put in one cluster and whose
exact shingle Jaccard is at least the banding's threshold (1/bands)^(1/rows): near duplicates the
extract already held. Both are closed under transitivity (clusters). PREDICTED: for each tool, all
pairs inside the connected components of its LSH candidate pairs (one union-find for both); the
document-level numbers compare the drop sets (all but each cluster's smallest key).

OURS is `near_duplicates` on a local Ray runtime (cold run reported apart) and in-process
(`parallel=False`, one core). DATASKETCH is MinHash (default scheme) + MinHashLSH(params=(bands,
rows)) fed the same shingle strings (`simplify`, word n-grams), single process, insert then query.
Each setting `SHINGLE:BANDSxROWS` runs both on the same corpus. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from datasketch import MinHash, MinHashLSH  # not a dependency of lmforge: see the module docstring

from lmforge.corpus import READERS, SourceConfig
from lmforge.corpus.config import NearDedupConfig
from lmforge.corpus.minhash import UnionFind, jaccard, shingle_hashes, simplify
from lmforge.corpus.near_dedup import near_duplicates
from lmforge.corpus.normalize import normalize_text

MIN_WORDS = 50
CHUNK_DOCS = 2000


def read_corpus(data_dir: Path, pattern: str) -> list[str]:
    texts = []
    for path in sorted(data_dir.glob(pattern)):
        source = SourceConfig(path=str(path), format="wikiextractor")
        for record in READERS.get("wikiextractor")(str(path), source):
            text = normalize_text(record.text or "")
            if len(text.split()) >= MIN_WORDS:
                texts.append(text)
    return texts


def plant(texts: list[str], num_planted: int, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """`texts` plus edited copies (appended); the (original, copy) key pairs."""
    rng = random.Random(seed)
    pool = [word for text in rng.sample(texts, min(500, len(texts))) for word in text.split()]
    copies, pairs = [], []
    for original in sorted(rng.sample(range(len(texts)), num_planted)):
        words = texts[original].split()
        for _ in range(round(rng.uniform(0.05, 0.10) * len(words))):
            kind, where = rng.choice(("substitute", "insert", "delete")), rng.randrange(len(words))
            if kind == "substitute":
                words[where] = rng.choice(pool)
            elif kind == "insert":
                words.insert(where, rng.choice(pool))
            elif len(words) > 1:
                del words[where]
        pairs.append((original, len(texts) + len(copies)))
        copies.append(" ".join(words))
    return texts + copies, pairs


def components(pairs: Any) -> list[list[int]]:
    forest = UnionFind()
    for first, second in pairs:
        forest.union(int(first), int(second))
    groups: dict[int, list[int]] = {}
    for key in forest.parent:
        groups.setdefault(forest.find(key), []).append(key)
    return [sorted(group) for group in groups.values()]


def pairs_within(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {pair for group in groups for pair in itertools.combinations(group, 2)}


def drops(groups: list[list[int]]) -> set[int]:
    return {key for group in groups for key in group[1:]}


def run_ours(texts: list[str], config: NearDedupConfig, parallel: bool) -> dict[str, Any]:
    chunks = [
        (range(start, min(start + CHUNK_DOCS, len(texts))), texts[start : start + CHUNK_DOCS])
        for start in range(0, len(texts), CHUNK_DOCS)
    ]
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-minhash-") as work:
        start = time.perf_counter()
        result = near_duplicates(chunks, config, Path(work), parallel=parallel)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs": result.edges.tolist(), "stats": result.stats}


def datasketch_shingles(text: str, size: int) -> list[bytes]:
    words = simplify(text).split(" ")
    if words == [""]:
        return []
    size = min(size, len(words))
    return [" ".join(words[index : index + size]).encode() for index in range(len(words) - size + 1)]


def run_datasketch(texts: list[str], config: NearDedupConfig) -> dict[str, Any]:
    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
    signatures = {}
    for key, text in enumerate(texts):
        shingles = datasketch_shingles(text, config.shingle_size)
        if shingles:
            signature = MinHash(num_perm=config.num_perm, seed=config.seed)
            signature.update_batch(shingles)
            lsh.insert(key, signature)
            signatures[key] = signature
    pairs = {
        (min(key, other), max(key, other))
        for key, signature in signatures.items()
        for other in lsh.query(signature)
        if other != key
    }
    components(pairs)  # the clustering step, timed as ours is
    return {"seconds": time.perf_counter() - start, "pairs": sorted(pairs)}


def scores(predicted: set, truth: set) -> dict[str, float]:
    hits = len(predicted & truth)
    return {
        "precision": hits / len(predicted) if predicted else 1.0,
        "recall": hits / len(truth) if truth else 1.0,
        "num_predicted": len(predicted),
    }


def evaluate(texts, planted, config, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Truth (planted + verified pre-existing pairs) and each run's pair and drop-set scores."""
    threshold = (1 / config.bands) ** (1 / config.rows)
    cache: dict[int, np.ndarray] = {}

    def similarity(first: int, second: int) -> float:
        for key in (first, second):
            if key not in cache:
                cache[key] = shingle_hashes(texts[key], config.shingle_unit, config.shingle_size)
        return jaccard(cache[first], cache[second])

    predicted = {name: components(run["pairs"]) for name, run in runs.items()}
    planted_pairs = pairs_within(components(planted))
    candidates = set().union(*(pairs_within(groups) for groups in predicted.values())) - planted_pairs
    verified = [pair for pair in sorted(candidates) if similarity(*pair) >= threshold]
    truth_groups = components(list(planted) + verified)
    truth = pairs_within(truth_groups)
    planted_similarity = [similarity(*pair) for pair in planted]
    result: dict[str, Any] = {
        "jaccard_threshold": threshold,
        "planted_pair_jaccard": {
            "min": min(planted_similarity),
            "median": float(np.median(planted_similarity)),
            "max": max(planted_similarity),
        },
        "num_truth_pairs": len(truth),
        "num_preexisting_pairs_verified": len(verified),
        "num_candidate_pairs_rejected": len(candidates) - len(verified),
    }
    for name, groups in predicted.items():
        result[name] = {
            "pairs": scores(pairs_within(groups), truth),
            "dropped_documents": scores(drops(groups), drops(truth_groups)),
            "seconds": runs[name]["seconds"],
            "docs_per_second": len(texts) / runs[name]["seconds"],
        }
    return result


def run_setting(texts: list[str], planted: list[tuple[int, int]], setting: str, args: Any) -> dict[str, Any]:
    """Datasketch, ours on Ray (after a cold run) and ours in-process on one `SHINGLE:BANDSxROWS`."""
    shingle, banding = setting.split(":")
    bands, rows = (int(value) for value in banding.split("x"))
    config = NearDedupConfig(shingle_size=int(shingle), bands=bands, rows=rows, num_perm=bands * rows)
    cold = run_ours(texts, config, parallel=True)
    runs = {
        "datasketch": common.measured(lambda config=config: run_datasketch(texts, config), args),
        "ours_ray": common.measured(lambda config=config: run_ours(texts, config, True), args),
        "ours_in_process": common.measured(lambda config=config: run_ours(texts, config, False), args),
    }
    if not cold["pairs"] == runs["ours_ray"]["pairs"] == runs["ours_in_process"]["pairs"]:
        raise SystemExit(f"{setting}: Ray and in-process runs found different pairs")
    evaluation = evaluate(texts, planted, config, runs)
    ds_rate = evaluation["datasketch"]["docs_per_second"]
    evaluation["ratio_ours_ray_over_datasketch"] = evaluation["ours_ray"]["docs_per_second"] / ds_rate
    evaluation["ratio_ours_in_process_over_datasketch"] = (
        evaluation["ours_in_process"]["docs_per_second"] / ds_rate
    )
    evaluation["ours_cold_ray_seconds"] = cold["seconds"]
    evaluation["loads"] = {name: [run["load_1min"], run["load_1min_after"]] for name, run in runs.items()}
    evaluation["ours_stats"] = runs["ours_ray"]["stats"]
    return evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pattern", default=common.ENWIKI_PATTERN, help="relative to the data dir")
    parser.add_argument("--num-planted", type=int, default=1000, help="edited copies added")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setting",
        action="append",
        help="SHINGLE:BANDSxROWS (repeatable); default 5:14x8 (datatrove's) and 5:32x4",
    )
    common.add_load_arguments(parser)
    args = parser.parse_args()
    settings = args.setting or ["5:14x8", "5:32x4"]
    data_dir = common.require_data_dir()
    base = read_corpus(data_dir, args.pattern)
    texts, planted = plant(base, args.num_planted, args.seed)
    import ray

    common.wait_for_quiet(args.max_load, args.max_wait)
    ray_init_seconds = common.start_ray()
    try:
        results = {setting: run_setting(texts, planted, setting, args) for setting in settings}
    finally:
        ray.shutdown()
    common.emit(
        {
            "benchmark": "minhash_vs_datasketch",
            "num_documents": len(texts),
            "num_base_documents": len(base),
            "num_planted": len(planted),
            "settings": results,
            "ray_init_seconds": ray_init_seconds,
            "machine": common.machine(),
        }
    )


if __name__ == "__main__":
    main()
