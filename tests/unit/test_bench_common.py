"""The benchmarks' shared helpers (bench/common.py): load gate, spreads, rounding, CPU model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH_COMMON = Path(__file__).resolve().parents[2] / "bench" / "common.py"


@pytest.fixture(scope="module")
def common():
    # bench/ is a folder of scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("lmforge_bench_common", BENCH_COMMON)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_wait_for_quiet_waits_until_the_load_drops(common):
    loads = iter([3.0, 2.0, 1.2, 0.5])
    slept: list[float] = []
    result = common.wait_for_quiet(1.5, 300, 30, load=lambda: next(loads), sleep=slept.append)
    assert slept == [30, 30]
    assert result == {"load_1min": 1.2, "waited_seconds": 60}


@pytest.mark.unit
def test_wait_for_quiet_gives_up_after_max_wait(common):
    slept: list[float] = []
    result = common.wait_for_quiet(1.5, 50, 30, load=lambda: 4.0, sleep=slept.append)
    assert slept == [30, 20]
    assert result == {"load_1min": 4.0, "waited_seconds": 50}


@pytest.mark.unit
def test_spread(common):
    assert common.spread([2.0, 4.0, 3.0]) == {"median": 3.0, "min": 2.0, "max": 4.0, "relative_spread": 2 / 3}
    with pytest.raises(ValueError):
        common.spread([])


@pytest.mark.unit
def test_rounded_keeps_significant_digits_in_nested_records(common):
    record = {"a": 1234.5678, "b": [0.000123456, 7], "c": {"d": "x", "e": 2.0}}
    assert common.rounded(record) == {"a": 1235.0, "b": [0.0001235, 7], "c": {"d": "x", "e": 2.0}}


@pytest.mark.unit
def test_cpu_model_reads_the_first_model_name(common, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\nprocessor\t: 1\nmodel name\t: other\n"
    )
    assert common.cpu_model(cpuinfo) == "Example CPU 9000"


@pytest.mark.unit
def test_demo_corpus_config_matches_the_demo_preset(common):
    import yaml

    from lmforge.corpus import CorpusConfig

    demo = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    assert common.demo_corpus_config() == CorpusConfig.model_validate(demo["corpus"])
