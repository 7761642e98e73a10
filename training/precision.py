"""Training precision from the hardware: bf16 where the workers' device computes it natively, else fp32."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.core.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")
# x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16, listed as "bf16" in cpuinfo Features) bf16 instructions;
# without them PyTorch emulates bf16 matmuls, seen ~100x slower than fp32 on an AVX2-only EPYC.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Ampere (sm_80) is the first NVIDIA generation with bf16 tensor cores.
MIN_BF16_CUDA_CAPABILITY = (8, 0)
SLOWDOWN_MATMUL_SIZE = 256
# The flags say what the CPU has, not what PyTorch's kernels use: oneDNN can be capped below them
# (ONEDNN_MAX_CPU_ISA, an old build), which emulates bf16 as slowly as on a CPU without it. So on CPU
# the flags must be confirmed by timing: native bf16 ran at 0.5x the fp32 time of a 256x256 matmul on
# a Zen 5 EPYC, emulated bf16 at 40-100x; 2x leaves a wide margin for a noisy measurement.
MAX_NATIVE_BF16_SLOWDOWN = 2.0


@dataclass(frozen=True)
class DeviceProbe:
    """What the workers' device can do, measured where they run."""

    device_type: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""
    cuda_capability: tuple[int, int] | None = None
    device_name: str = ""
    # bf16 / fp32 time of a small matmul; measured when bf16 or auto is requested.
    bf16_slowdown: float | None = None


@dataclass(frozen=True)
class ResolvedPrecision:
    precision: str  # "fp32", "bf16" or "fp16"
    reason: str
    warning: str | None = None


# Takes "measure the bf16 slowdown too" and returns the probe; the launcher runs it on a Ray worker.
DeviceProber = Callable[[bool], DeviceProbe]


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """CPU feature flags of the first processor in /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_flags(cpu_flags: Iterable[str]) -> list[str]:
    """The flags among `cpu_flags` that mean native bf16 matmuls (empty: bf16 is emulated)."""
    return sorted(NATIVE_BF16_CPU_FLAGS.intersection(cpu_flags))


def bf16_slowdown(device: torch.device, size: int = SLOWDOWN_MATMUL_SIZE, repeats: int = 3) -> float:
    """Time of a size x size bf16 matmul over the fp32 one on `device` (best of `repeats` each)."""
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))

    def best_seconds(dtype: torch.dtype) -> float:
        a, b = left.to(dtype), right.to(dtype)
        torch.matmul(a, b)  # warm-up: kernel choice
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    return best_seconds(torch.bfloat16) / best_seconds(torch.float32)


def probe_device(device_type: str, measure_bf16: bool = False) -> DeviceProbe:
    """Probe this process's CPU or first CUDA device (run it where the workers run)."""
    device = torch.device(device_type)
    slowdown = bf16_slowdown(device) if measure_bf16 else None
    if device_type == "cuda":
        return DeviceProbe(
            "cuda",
            cuda_capability=tuple(torch.cuda.get_device_capability(0)),  # type: ignore[arg-type]
            device_name=torch.cuda.get_device_name(0),
            bf16_slowdown=slowdown,
        )
    return DeviceProbe(
        "cpu",
        cpu_flags=read_cpu_flags(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        bf16_slowdown=slowdown,
    )


def native_bf16(probe: DeviceProbe) -> tuple[bool, str]:
    """Whether the probed device computes bf16 natively, and the evidence in words."""
    if probe.device_type == "cuda":
        major, minor = probe.cuda_capability or (0, 0)
        ok = (major, minor) >= MIN_BF16_CUDA_CAPABILITY
        return ok, f"{probe.device_name or 'GPU'} compute capability {major}.{minor}"
    flags = native_bf16_flags(probe.cpu_flags)
    torch_view = f" (torch CPU capability {probe.cpu_capability})" if probe.cpu_capability else ""
    if not flags:
        return False, f"CPU lacks avx512_bf16/amx_bf16{torch_view}"
    evidence = f"CPU has {', '.join(flags)}{torch_view}"
    slowdown = probe.bf16_slowdown
    if slowdown is not None and slowdown > MAX_NATIVE_BF16_SLOWDOWN:
        return (
            False,
            f"{evidence} but PyTorch emulates bf16: a bf16 matmul took {slowdown:.3g}x the fp32 time",
        )
    timed = f", bf16 matmul at {slowdown:.2g}x the fp32 time" if slowdown is not None else ""
    return True, evidence + timed


def resolve_precision(requested: str, probe: DeviceProbe) -> ResolvedPrecision:
    """Turn the configured precision ("auto" or explicit) into the one the workers train in."""
    native, evidence = native_bf16(probe)
    if requested == "fp16" and probe.device_type != "cuda":
        raise ConfigError("precision 'fp16' needs GPUs but the workers run on CPU; use auto, bf16 or fp32")
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        why = "native bf16" if native else "no native bf16"
        return ResolvedPrecision(chosen, f"auto: {evidence}, {why}")
    warning = None
    if requested == "bf16" and not native:
        slowdown = f"{probe.bf16_slowdown:.3g}x" if probe.bf16_slowdown else "an unmeasured factor"
        warning = (
            f"precision bf16 was set explicitly but {evidence}: bf16 is emulated here; a "
            f"{SLOWDOWN_MATMUL_SIZE}x{SLOWDOWN_MATMUL_SIZE} bf16 matmul took {slowdown} the fp32 time "
            "(precision: auto would pick fp32)"
        )
    return ResolvedPrecision(requested, f"set explicitly ({evidence})", warning)
