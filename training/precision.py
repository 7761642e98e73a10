"""Training precision from the hardware: bf16 where the workers' device computes it natively, else fp32."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
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
# The flags say what the CPU has, not what PyTorch's bf16 matmuls use: oneDNN can be capped below
# them (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA), and then emulates bf16 as slowly as a
# CPU without it (seen: 1.2 vs 52 GFLOP/s fp32 under ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 5 EPYC). The
# decision reads the cap, not a timing: precision is part of the pre-training recipe, and a timing
# taken on a busy machine must not change a recipe. The timing only words warnings.
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN ISA levels (its cpu_isa names) that include bf16 dot products.
ONEDNN_BF16_ISAS = frozenset(
    {
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "ALL",
        "DEFAULT",
    }
)
# A bf16 matmul slower than this many times the fp32 one is emulated (native: 0.5x, emulated: 40-100x).
EMULATED_BF16_SLOWDOWN = 10.0


@dataclass(frozen=True)
class DeviceProbe:
    """What the workers' device can do, measured where they run."""

    device_type: str  # "cpu" or "cuda"
    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""
    cuda_capability: tuple[int, int] | None = None
    device_name: str = ""
    onednn_isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA as the workers see it
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
        onednn_isa_cap=onednn_isa_cap(),
    )


def onednn_isa_cap(environ: Mapping[str, str] = os.environ) -> str | None:
    """The ISA limit set for oneDNN in this process's environment (None: no limit)."""
    for name in ONEDNN_ISA_ENV:
        if environ.get(name):
            return environ[name].strip().upper()
    return None


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
    cap = probe.onednn_isa_cap
    if cap is not None and cap not in ONEDNN_BF16_ISAS:
        return False, f"{evidence} but oneDNN is capped at {cap} (ONEDNN_MAX_CPU_ISA), so bf16 is emulated"
    return True, evidence


def resolve_precision(requested: str, probe: DeviceProbe) -> ResolvedPrecision:
    """Turn the configured precision ("auto" or explicit) into the one the workers train in."""
    native, evidence = native_bf16(probe)
    if requested == "fp16" and probe.device_type != "cuda":
        raise ConfigError("precision 'fp16' needs GPUs but the workers run on CPU; use auto, bf16 or fp32")
    warning = None
    slowdown = probe.bf16_slowdown
    if requested == "auto" and native and slowdown is not None and slowdown > EMULATED_BF16_SLOWDOWN:
        # Kept as bf16 (the recipe must not follow a timing); says so when the timing disagrees.
        warning = (
            f"{evidence}, yet a {SLOWDOWN_MATMUL_SIZE}x{SLOWDOWN_MATMUL_SIZE} bf16 matmul took "
            f"{slowdown:.3g}x the fp32 time: bf16 may be emulated here (or the cores were busy); "
            "set precision: fp32 if training is slow"
        )
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        why = "native bf16" if native else "no native bf16"
        return ResolvedPrecision(chosen, f"auto: {evidence}, {why}", warning)
    if requested == "bf16" and not native:
        shown = f"{slowdown:.3g}x" if slowdown else "an unmeasured factor"
        warning = (
            f"precision bf16 was set explicitly but {evidence}: bf16 is emulated here; a "
            f"{SLOWDOWN_MATMUL_SIZE}x{SLOWDOWN_MATMUL_SIZE} bf16 matmul took {shown} the fp32 time "
            "(precision: auto would pick fp32)"
        )
    return ResolvedPrecision(requested, f"set explicitly ({evidence})", warning)
