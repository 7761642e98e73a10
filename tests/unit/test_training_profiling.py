"""Step profiling: phases from torch.profiler events, the profiling callback, and the lever switches."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch.autograd import DeviceType
from torch.profiler import record_function

from lmforge.training import PretrainConfig
from lmforge.training.config import EAGER_ATTENTION_MAX_LENGTH, ModelConfig, ProfileConfig
from lmforge.training.objectives import get_objective
from lmforge.training.profiling import PHASES, StepProfiler, new_profiler, phase_breakdown

pytestmark = pytest.mark.unit


def _busy(seconds: float) -> None:
    """Hold the CPU in torch ops for about `seconds` (profiled as aten calls)."""
    end = time.perf_counter() + seconds
    x = torch.ones(64, 64)
    while time.perf_counter() < end:
        x = torch.mm(x, x).clamp(max=1.0)


class Timed:
    """perf_counter seconds per phase, the independent reference for the profiler's numbers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def phase(self, name: str, seconds: float, comm: float = 0.0) -> None:
        start = time.perf_counter()
        with record_function(getattr(PHASES, name)):
            _busy(seconds)
            if comm:
                begin = time.perf_counter()
                with record_function("gloo:all_reduce"), record_function("c10d::allreduce_"):
                    _busy(comm)  # nested collectives count once
                self.seconds["comm"] = self.seconds.get("comm", 0.0) + time.perf_counter() - begin
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _step(timed: Timed | None = None) -> None:
    timed = timed or Timed()
    timed.phase("data", 0.01)
    timed.phase("forward", 0.03)
    timed.phase("backward", 0.02, comm=0.015)
    timed.phase("optimizer", 0.005)
    time.sleep(0.01)  # outside every phase


def test_breakdown_splits_a_step_into_phases_and_communication() -> None:
    profiler = new_profiler(torch.device("cpu"))
    timed = Timed()
    start = time.perf_counter()
    with profiler:
        for _ in range(2):
            _step(timed)
    wall = time.perf_counter() - start
    result = phase_breakdown(profiler.events(), steps=2, wall_seconds=wall)
    phases = result["phases"]
    assert result["step_seconds"] == pytest.approx(wall / 2)
    for name in ("data", "forward", "backward", "optimizer"):
        assert phases[name] == pytest.approx(timed.seconds[name] / 2, rel=0.05, abs=0.001), name
    assert result["communication"] == pytest.approx(timed.seconds["comm"] / 2, rel=0.05, abs=0.001)
    assert phases["other"] >= 0.009  # the sleep
    assert sum(phases.values()) == pytest.approx(result["step_seconds"], rel=1e-6)
    assert set(result["communication_by_phase"]) == {"backward"}
    assert "aten::mm" in result["top_ops_self_seconds"]


def _event(name, cpu, device=0.0, parent=None, on=DeviceType.CPU, annotation=False):
    """A FunctionEvent stand-in: times in microseconds, as torch.profiler reports them."""
    return SimpleNamespace(name=name, cpu_time_total=cpu, self_cpu_time_total=cpu, device_type=on,
                           self_device_time_total=device, cpu_parent=parent,
                           is_user_annotation=annotation)  # fmt: skip


def test_breakdown_sums_device_kernel_time_where_the_profiler_saw_a_gpu() -> None:
    forward = _event(PHASES.forward, 3000.0)
    events = [
        forward,
        # A host op's device time repeats its kernels'; an annotation's device span covers them.
        _event("aten::mm", 1000.0, device=2000.0, parent=forward),
        _event(PHASES.forward, 0.0, device=3000.0, on=DeviceType.CUDA, annotation=True),
        _event("sm90_gemm", 0.0, device=1500.0, on=DeviceType.CUDA),
        _event("sm90_gemm", 0.0, device=500.0, on=DeviceType.CUDA),
        _event("triton_fused_softmax", 0.0, device=1000.0, on=DeviceType.CUDA),
    ]
    result = phase_breakdown(events, steps=2, wall_seconds=0.01)
    assert result["device_busy_seconds"] == pytest.approx(0.0015)  # 3 ms of kernels over 2 steps
    assert result["top_kernels_device_seconds"] == pytest.approx(
        {"sm90_gemm": 0.001, "triton_fused_softmax": 0.0005}
    )
    cpu_only = phase_breakdown(events[:2], steps=2, wall_seconds=0.01)
    assert "device_busy_seconds" not in cpu_only and "top_kernels_device_seconds" not in cpu_only


class FakeLoop(SimpleNamespace):
    def record(self, event, telemetry=False, **values):
        self.records.append({"event": event, "telemetry": telemetry, **values})


def test_profiler_callback_records_the_configured_steps_once() -> None:
    loop = FakeLoop(
        step=0,
        records=[],
        is_writer=True,
        env=SimpleNamespace(device=torch.device("cpu")),
        config=SimpleNamespace(max_steps=6),
    )
    callback = StepProfiler(ProfileConfig(start_step=2, steps=3))
    timed: list[Timed] = []
    callback.on_start(loop)
    assert callback.profiler is None  # step 1 is not profiled
    for _ in range(6):
        timed.append(Timed())
        _step(timed[-1])
        loop.step += 1
        callback.on_step_end(loop)
        assert (callback.profiler is not None) == (2 <= loop.step + 1 <= 4)
    (record,) = loop.records
    assert record["event"] == "profile" and record["telemetry"] and record["first_step"] == 2
    (rank0,) = record["ranks"]
    assert rank0["steps"] == 3
    profiled = [step.seconds["forward"] for step in timed[1:4]]  # steps 2-4
    assert rank0["phases"]["forward"] == pytest.approx(sum(profiled) / 3, rel=0.05, abs=0.001)


def test_profiling_from_the_first_step_starts_at_loop_start() -> None:
    loop = FakeLoop(step=0, records=[], is_writer=True, env=SimpleNamespace(device=torch.device("cpu")),
                    config=SimpleNamespace(max_steps=1))  # fmt: skip
    callback = StepProfiler(ProfileConfig(start_step=1, steps=1))
    callback.on_start(loop)
    assert callback.profiler is not None
    _step()
    loop.step = 1
    callback.on_step_end(loop)
    assert [record["event"] for record in loop.records] == ["profile"]


def test_lever_switches_resolve_and_unknown_profile_keys_are_rejected() -> None:
    config = PretrainConfig()
    assert config.adamw_options() == {"fused": True, "foreach": False}
    assert PretrainConfig(adamw="for-loop").adamw_options() == {"fused": False, "foreach": False}
    assert PretrainConfig(adamw="foreach").adamw_options() == {"fused": False, "foreach": True}
    assert config.compiles(use_gpu=True) and not config.compiles(use_gpu=False)
    assert PretrainConfig(compile=True).compiles(use_gpu=False)
    with pytest.raises(ValidationError, match="every"):
        PretrainConfig.model_validate({"profile": {"every": 3}})
    with pytest.raises(ValidationError):
        PretrainConfig.model_validate({"adamw": "sgd"})


def test_profile_is_operational_but_levers_shape_the_weights() -> None:
    from lmforge.training.artifact import model_recipe

    plain = model_recipe(PretrainConfig(), "bf16")
    assert model_recipe(PretrainConfig(profile=ProfileConfig()), "bf16") == plain
    assert model_recipe(PretrainConfig(adamw="for-loop"), "bf16") != plain
    assert model_recipe(PretrainConfig(compile=True), "bf16") != plain
    assert model_recipe(PretrainConfig(attention="sdpa"), "bf16") != plain


def test_auto_vocab_padding_is_64_on_gpu_and_none_on_cpu() -> None:
    config = PretrainConfig()
    assert config.padded_vocab_size(50257, use_gpu=True) == 50304
    assert config.padded_vocab_size(50304, use_gpu=True) == 50304
    assert config.padded_vocab_size(50257, use_gpu=False) == 50257
    assert PretrainConfig(vocab_multiple_of=128).padded_vocab_size(8000, use_gpu=False) == 8064
    assert PretrainConfig(vocab_multiple_of=1).padded_vocab_size(50257, use_gpu=True) == 50257
    with pytest.raises(ValidationError, match="vocab_multiple_of"):
        PretrainConfig(vocab_multiple_of=0)
    from lmforge.training.artifact import model_recipe

    assert model_recipe(PretrainConfig(vocab_multiple_of=64), "bf16") != model_recipe(config, "bf16")


def test_auto_attention_is_sdpa_on_gpu_and_for_long_sequences_else_eager() -> None:
    config = PretrainConfig()
    assert config.attention_implementation(use_gpu=True, seq_len=256) == "sdpa"
    assert config.attention_implementation(use_gpu=False, seq_len=256) == "eager"
    assert config.attention_implementation(use_gpu=False, seq_len=EAGER_ATTENTION_MAX_LENGTH) == "eager"
    assert config.attention_implementation(use_gpu=False, seq_len=EAGER_ATTENTION_MAX_LENGTH + 1) == "sdpa"
    assert PretrainConfig(attention="sdpa").attention_implementation(use_gpu=False, seq_len=8) == "sdpa"
    with pytest.raises(ValidationError, match="attention"):
        PretrainConfig.model_validate({"attention": "flash"})


@pytest.mark.parametrize("objective", ["clm", "mlm", "span"])
def test_attention_kernels_give_the_same_loss(objective: str) -> None:
    """eager and sdpa are two kernels for one function: the same weights give the same loss."""
    from lmforge.training.models import use_attention

    special = {"eos": 1, "pad": 0, "cls": 2, "sep": 3, "mask": 4, "unk": 5}
    torch.manual_seed(0)
    model = get_objective(objective).build_model(ModelConfig(size="debug"), 64, 16, special)
    model.eval()
    ids = torch.randint(6, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "labels": ids}
    if objective == "span":
        inputs["decoder_input_ids"] = ids
    losses = {}
    for kernel in ("sdpa", "eager"):
        use_attention(model, kernel)
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            losses[kernel] = model(**inputs).loss.item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-5)
