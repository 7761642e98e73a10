"""The scaling benchmark's corpus copies (bench/scaling.py): perturbation, slope and per-unit ratios."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

BENCH_SCALING = Path(__file__).resolve().parents[2] / "bench" / "scaling.py"

ARTICLE = (
    '<doc id="7" url="?curid=7" title="Harrow International School Shanghai">\n'
    "Harrow International School Shanghai\n"
    "\n"
    "Harrow International School Shanghai () is a British international boarding and day, all-through "
    "school in Waigaoqiao, Pudong, Shanghai. It opened in August 2016 and is the fourth in the Harrow "
    "family of schools in the Asia region in association with Harrow School and The John Lyon School.\n"
    "Location.\n"
    "Harrow has a campus with a designated 70% green space ratio, located within the Sunland project in "
    "the Waigaoqiao area of Pudong District in Shanghai.\n"
    "</doc>\n"
)


@pytest.fixture(scope="module")
def scaling():
    # bench/ is a folder of scripts, not a package: load the module from its file, with bench/ on
    # sys.path for its `import common`.
    import sys

    sys.path.insert(0, str(BENCH_SCALING.parent))
    try:
        spec = importlib.util.spec_from_file_location("lmforge_bench_scaling", BENCH_SCALING)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_SCALING.parent))
    return module


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b)


def copy_of(scaling, tmp_path: Path, copy: int) -> str:
    source = tmp_path / "wiki_00.txt"
    source.write_text(ARTICLE, encoding="utf-8")
    target = tmp_path / f"c{copy}" / "wiki_00.txt"
    scaling.write_copy(source, target, copy)
    return target.read_text(encoding="utf-8")


@pytest.mark.unit
def test_copy_zero_is_the_original(scaling, tmp_path):
    assert copy_of(scaling, tmp_path, 0) == ARTICLE
    assert (tmp_path / "c0" / "wiki_00.txt").is_symlink()


@pytest.mark.unit
def test_copies_keep_markup_words_and_last_word_of_every_line(scaling, tmp_path):
    original = ARTICLE.splitlines()
    for copy in (1, 2, 7):
        lines = copy_of(scaling, tmp_path, copy).splitlines()
        assert len(lines) == len(original)
        for before, after in zip(original, lines, strict=True):
            if before.startswith("<doc") or before.startswith("</doc") or len(before.split()) < 3:
                assert after == before
                continue
            assert Counter(after.split()) == Counter(before.split())
            assert after.split()[-1] == before.split()[-1]


@pytest.mark.unit
def test_copies_differ_from_each_other_beyond_near_dedup_reach(scaling, tmp_path):
    texts = [copy_of(scaling, tmp_path, copy) for copy in range(4)]
    assert len(set(texts)) == 4
    # The demo's MinHash (14 bands x 8 rows) targets 5-shingle Jaccard near 0.72; copies must be far below.
    for first in range(4):
        for second in range(first + 1, 4):
            assert jaccard(shingles(texts[first]), shingles(texts[second])) < 0.2


@pytest.mark.unit
def test_copies_are_deterministic(scaling, tmp_path):
    line = "one two three four five six seven eight nine ten."
    assert scaling.perturb_line(line, 3, "wiki_05.txt", 12) == scaling.perturb_line(
        line, 3, "wiki_05.txt", 12
    )
    assert scaling.perturb_line(line, 3, "wiki_05.txt", 12) != scaling.perturb_line(
        line, 4, "wiki_05.txt", 12
    )


@pytest.mark.unit
def test_slope_and_per_unit_ratios(scaling):
    sizes = [1, 2, 4, 8]
    assert scaling.loglog_slope(sizes, [3.0 * s for s in sizes]) == pytest.approx(1.0)
    assert scaling.loglog_slope(sizes, [3.0 * s * s for s in sizes]) == pytest.approx(2.0)
    assert scaling.loglog_slope(sizes, [5.0, 5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert scaling.per_unit_ratios(sizes, [2.0, 4.0, 10.0, 16.0]) == pytest.approx([1.0, 1.0, 1.25, 1.0])


@pytest.mark.unit
def test_affine_fit_separates_fixed_cost_from_marginal_cost(scaling):
    sizes = [1, 2, 4, 8]
    fixed, per_unit, residual = scaling.affine_fit(sizes, [7.0 + 0.5 * s for s in sizes])
    assert (fixed, per_unit, residual) == pytest.approx((7.0, 0.5, 0.0), abs=1e-9)
    _, _, residual = scaling.affine_fit(sizes, [1.0, 2.0, 4.0, 16.0])
    assert residual > 0.15
