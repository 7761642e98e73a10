"""Precision from the hardware: CPU flags and GPU capability, both CPU kinds, explicit choices, logging."""

from __future__ import annotations

import dataclasses
import logging
import platform

import pytest
import torch

from lmforge.core.errors import ConfigError
from lmforge.training import PretrainConfig
from lmforge.training.inputs import choose_precision
from lmforge.training.precision import (
    DeviceProbe,
    bf16_slowdown,
    native_bf16_flags,
    onednn_isa_cap,
    probe_device,
    read_cpu_flags,
    resolve_precision,
)

pytestmark = pytest.mark.unit

# First-processor lines of /proc/cpuinfo on the two EPYC kinds seen on our CI machines.
ZEN5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def cpu_probe(cpuinfo: str, tmp_path, slowdown: float | None = None) -> DeviceProbe:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    return DeviceProbe("cpu", cpu_flags=read_cpu_flags(path), bf16_slowdown=slowdown)


def test_read_cpu_flags_x86_and_arm(tmp_path):
    assert native_bf16_flags(cpu_probe(ZEN5, tmp_path).cpu_flags) == ["avx512_bf16"]
    assert native_bf16_flags(cpu_probe(ZEN3, tmp_path).cpu_flags) == []
    assert native_bf16_flags(cpu_probe(GRAVITON3, tmp_path).cpu_flags) == ["bf16"]
    assert native_bf16_flags({"amx_bf16", "amx_tile"}) == ["amx_bf16"]
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_picks_bf16_only_with_native_support(tmp_path):
    native = resolve_precision("auto", cpu_probe(ZEN5, tmp_path))
    assert (native.precision, native.warning) == ("bf16", None)
    assert "avx512_bf16" in native.reason and native.reason.startswith("auto: ")
    emulated = resolve_precision("auto", cpu_probe(ZEN3, tmp_path))
    assert (emulated.precision, emulated.warning) == ("fp32", None)
    assert "lacks" in emulated.reason


def test_onednn_capped_below_the_cpu_means_emulated_bf16(tmp_path):
    """oneDNN capped below the CPU (ONEDNN_MAX_CPU_ISA=AVX2) emulates bf16 although the flags are there."""
    zen5 = cpu_probe(ZEN5, tmp_path)
    capped = resolve_precision("auto", dataclasses.replace(zen5, onednn_isa_cap="AVX2"))
    assert capped.precision == "fp32" and "capped at AVX2" in capped.reason
    for cap in (None, "AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"):
        assert resolve_precision("auto", dataclasses.replace(zen5, onednn_isa_cap=cap)).precision == "bf16"
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "avx2"}) == "AVX2"
    assert onednn_isa_cap({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"
    assert onednn_isa_cap({}) is None


def test_a_timing_never_changes_the_choice_only_the_warning(tmp_path):
    """Precision is part of a recipe; a timing taken on a busy machine must not move it."""
    slow = resolve_precision("auto", cpu_probe(ZEN5, tmp_path, slowdown=42.0))
    assert slow.precision == "bf16" and slow.warning is not None and "42x" in slow.warning
    assert resolve_precision("auto", cpu_probe(ZEN5, tmp_path, slowdown=0.5)).warning is None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's AVX2 cap is x86 only")
def test_capped_onednn_in_a_real_process_resolves_to_fp32():
    """Emulate an AVX2-only CPU on any x86 machine: the probe must measure, not trust the flags."""
    import subprocess
    import sys

    code = (
        "from lmforge.training.precision import probe_device, resolve_precision;"
        "print(resolve_precision('auto', probe_device('cpu', True)).precision)"
    )
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fp32"


def test_explicit_bf16_without_native_support_warns_with_measured_slowdown(tmp_path):
    resolved = resolve_precision("bf16", cpu_probe(ZEN3, tmp_path, slowdown=97.4))
    assert resolved.precision == "bf16"
    assert resolved.warning is not None and "97.4x" in resolved.warning and "256x256" in resolved.warning
    assert resolve_precision("bf16", cpu_probe(ZEN5, tmp_path, slowdown=0.5)).warning is None
    assert resolve_precision("fp32", cpu_probe(ZEN5, tmp_path)).precision == "fp32"


def test_fp16_needs_a_gpu(tmp_path):
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu_probe(ZEN5, tmp_path))
    gpu = DeviceProbe("cuda", cuda_capability=(7, 5), device_name="Tesla T4")
    assert resolve_precision("fp16", gpu).precision == "fp16"


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_gpu_capability_decides(capability, expected):
    resolved = resolve_precision("auto", DeviceProbe("cuda", cuda_capability=capability, device_name="GPU"))
    assert resolved.precision == expected
    assert f"{capability[0]}.{capability[1]}" in resolved.reason


def test_choose_precision_logs_and_measures_only_when_bf16_is_possible(tmp_path, caplog):
    asked: list[bool] = []

    def prober(measure: bool) -> DeviceProbe:
        asked.append(measure)
        return cpu_probe(ZEN3, tmp_path, slowdown=80.0 if measure else None)

    with caplog.at_level(logging.INFO, logger="lmforge"):
        assert choose_precision(PretrainConfig(), prober).precision == "fp32"
        assert choose_precision(PretrainConfig(precision="bf16"), prober).precision == "bf16"
        assert choose_precision(PretrainConfig(precision="fp32"), prober).precision == "fp32"
    assert asked == [True, True, False]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "80x" in warnings[0]
    assert any("training precision fp32 (auto: CPU lacks" in r.getMessage() for r in caplog.records)


def test_probe_this_cpu():
    probe = probe_device("cpu", measure_bf16=True)
    assert probe.device_type == "cpu" and probe.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert probe.bf16_slowdown is not None and probe.bf16_slowdown > 0
    # The default resolution on this machine follows its own flags (no oneDNN cap set in the tests).
    expected = "bf16" if native_bf16_flags(probe.cpu_flags) and probe.onednn_isa_cap is None else "fp32"
    assert resolve_precision("auto", probe).precision == expected


def test_bf16_slowdown_leaves_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    bf16_slowdown(torch.device("cpu"), size=32, repeats=1)
    assert torch.equal(torch.rand(4), expected)
