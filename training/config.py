"""Typed pre-training configuration: model size presets, MLM masking, optimisation and scaling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.core.configbase import StrictModel, choice, operational

# Longest sequence for which "auto" attention picks eager on CPU (PretrainConfig.attention).
EAGER_ATTENTION_MAX_LENGTH = 1024
# What `vocab_multiple_of: auto` pads to on GPU: tensor-core tiles want a multiple of 64 (nanoGPT).
GPU_VOCAB_MULTIPLE = 64


def pad_to_multiple(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (a vocabulary padded for aligned matmuls)."""
    return -(-size // multiple) * multiple


ModelSize = Literal["debug", "tiny", "small", "base", "gpt2", "custom"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]

# hidden size, layers, heads; the feed-forward width defaults to 4x hidden (GPT-2 / BERT convention).
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "debug": (64, 2, 2),
    "tiny": (128, 2, 2),
    "small": (256, 4, 4),
    # 23 M parameters at an 8k vocabulary: the CPU speed benchmark's model (docs/benchmarks.md).
    "base": (512, 6, 8),
    # GPT-2's smallest release (124 M at its 50k vocabulary): the GPU benchmark's model.
    "gpt2": (768, 12, 12),
}


class ResolvedModelShape(StrictModel):
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    dropout: float


class ModelConfig(StrictModel):
    """A named size preset; any explicit field overrides the preset (`custom` needs all three)."""

    size: ModelSize = "debug"
    hidden_size: int | None = Field(default=None, gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    num_heads: int | None = Field(default=None, gt=0)
    intermediate_size: int | None = Field(default=None, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.size == "custom" and None in (self.hidden_size, self.num_layers, self.num_heads):
            raise ValueError(
                "model.size 'custom' needs model.hidden_size, model.num_layers and model.num_heads"
            )
        shape = self.resolve()
        if shape.hidden_size % shape.num_heads:
            raise ValueError(
                f"model.hidden_size {shape.hidden_size} is not divisible by model.num_heads {shape.num_heads}"
            )
        return self

    def resolve(self) -> ResolvedModelShape:
        hidden, layers, heads = MODEL_PRESETS.get(self.size, (0, 0, 0))
        hidden = self.hidden_size or hidden
        return ResolvedModelShape(
            hidden_size=hidden,
            num_layers=self.num_layers or layers,
            num_heads=self.num_heads or heads,
            intermediate_size=self.intermediate_size or 4 * hidden,
            dropout=self.dropout,
        )


class MaskingConfig(StrictModel):
    """BERT-style corruption: select `mask_probability` of non-special tokens, then 80/10/10."""

    mask_probability: float = Field(default=0.15, gt=0.0, lt=1.0)
    replace_with_mask: float = Field(default=0.8, ge=0.0, le=1.0)
    replace_with_random: float = Field(default=0.1, ge=0.0, le=1.0)
    # Select whole words (every sub-token of a selected word), as BERT's whole-word-masking models.
    whole_word: bool = False
    # True: fresh masks every epoch (RoBERTa); false: one fixed mask per sequence (original BERT).
    dynamic: bool = True

    @model_validator(mode="after")
    def _check_split(self) -> MaskingConfig:
        if self.replace_with_mask + self.replace_with_random > 1.0 + 1e-9:
            raise ValueError(
                f"masking.replace_with_mask ({self.replace_with_mask}) + masking.replace_with_random "
                f"({self.replace_with_random}) must not exceed 1 (the rest stays unchanged)"
            )
        return self


class SpanCorruptionConfig(StrictModel):
    """T5 span corruption: `noise_density` of each sequence's tokens in spans of mean length
    `mean_noise_span_length`, each span replaced by one sentinel (defaults as in T5)."""

    noise_density: float = Field(default=0.15, gt=0.0, lt=1.0)
    mean_noise_span_length: float = Field(default=3.0, ge=1.0)


class ProfileConfig(StrictModel):
    """Which steps torch.profiler records (after warm-up: the first steps choose kernels)."""

    start_step: int = Field(default=3, ge=1)
    steps: int = Field(default=5, ge=1)

    def covers(self, step: int) -> bool:
        """Whether 1-based `step` is profiled."""
        return self.start_step <= step < self.start_step + self.steps


def _objective_names() -> list[str]:
    from lmforge.training.objectives import OBJECTIVES

    return OBJECTIVES.names()


class PretrainConfig(StrictModel):
    objective: str = choice("clm", _objective_names)
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    span: SpanCorruptionConfig = SpanCorruptionConfig()
    num_workers: int = Field(default=2, ge=1)
    # "auto": use CUDA when the Ray cluster reports GPUs.
    use_gpu: Literal["auto"] | bool = "auto"
    cpus_per_worker: int = operational(1, ge=1)
    # Ray resources each worker reserves; None: {"CPU": cpus_per_worker}, plus {"GPU": 1} on GPU.
    resources_per_worker: dict[str, float] | None = operational(None)
    # How Ray places the workers' bundles on nodes (Ray placement group strategies).
    placement_strategy: PlacementStrategy = operational("PACK")
    zero_stage: int = Field(default=1, ge=0, le=3)
    # "auto": bf16 where the workers' hardware computes it natively, else fp32 (training/precision.py).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the model and loss head before DeepSpeed wraps it. "auto": on GPU workers only; on
    # CPU it gained 2-6% with two 1-thread workers and costs 20-25 s on the first step
    # (docs/benchmarks.md). Compiled kernels round differently, so it shapes the weights.
    compile: Literal["auto"] | bool = "auto"
    # Attention kernel: "sdpa" (torch's scaled_dot_product_attention: flash attention on GPU) or
    # "eager" (explicit matmul + softmax). "auto": sdpa on GPU; eager on CPU up to 1024 tokens, where
    # torch's CPU flash-attention backward measured slower than the matmuls it replaces and eager
    # compiles to fused kernels (docs/benchmarks.md), sdpa beyond (eager's scores grow with length^2).
    attention: Literal["auto", "sdpa", "eager"] = "auto"
    # Round the model's vocabulary (embedding rows and output logits) up to a multiple of this, so
    # the output-head matmul gets aligned shapes (nanoGPT pads GPT-2's 50,257 to 50,304; T5 and Pythia
    # ship padded tables). Padded ids are never inputs or targets: the loss pushes their logits down,
    # as T5's unused ids. "auto": 64 on GPU; 1 (no padding) on CPU, where padding sped the head up
    # only for an odd size (50,257: 3% of the head; 8,100 and 30,522: none, docs/benchmarks.md) and
    # CPU-trained weights stay as they were. It shapes the weights; the export keeps the padded size.
    vocab_multiple_of: Literal["auto"] | int = "auto"
    # AdamW implementation: "fused" (one kernel over every tensor), "foreach" (batched tensor ops) or
    # "for-loop" (torch's CPU default); "auto": fused. They round differently, so it shapes the weights.
    adamw: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    # Profile steps [start, start + steps) of every rank with torch.profiler: a per-phase breakdown
    # (data, forward, backward, optimizer, communication) goes to the run's telemetry.
    profile: ProfileConfig | None = operational(None)
    micro_batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(default=20, ge=0)
    max_steps: int = Field(default=200, ge=1)
    # Matched compute: when set, max_steps is derived from this many training FLOPs and the measured
    # FLOPs of one step (training/budget.py), and warmup_steps cut to a tenth of them if longer.
    compute_budget_flops: float | None = Field(default=None, gt=0)
    lr_decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    gradient_clipping: float = Field(default=1.0, ge=0.0)
    log_every: int = operational(10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    # None evaluates the whole validation split; otherwise at most this many micro-batches per worker.
    eval_batches: int | None = Field(default=None, ge=1)
    checkpoint_every: int | None = operational(None, ge=1)
    max_failures: int = operational(0, ge=-1)
    # Metric sinks by registered name (training/callbacks.py LOGGERS); W&B or MLflow register beside them.
    loggers: tuple[str, ...] = operational(("tensorboard",))

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        # Imported here: objectives import transformers lazily but need this module's classes.
        from lmforge.training.objectives import OBJECTIVES

        if name not in OBJECTIVES:
            raise ValueError(OBJECTIVES.unknown_message(name))
        return name

    @field_validator("vocab_multiple_of")
    @classmethod
    def _positive_multiple(cls, multiple: str | int) -> str | int:
        if isinstance(multiple, int) and multiple < 1:
            raise ValueError(f"vocab_multiple_of: 'auto' or a whole number of at least 1, got {multiple}")
        return multiple

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from lmforge.training.callbacks import LOGGERS

        for name in names:
            if name not in LOGGERS:
                raise ValueError(f"loggers: {LOGGERS.unknown_message(name)}")
        return names

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"adam_betas: each beta must be in [0, 1), got {betas}")
        return betas

    @model_validator(mode="after")
    def _check_schedule(self) -> PretrainConfig:
        # A dumped config (a job file, a release, a flow parameter) carries max_steps at its default,
        # so only another value counts as set.
        if (
            self.compute_budget_flops is not None
            and self.max_steps != type(self).model_fields["max_steps"].default
        ):
            raise ValueError("set max_steps or compute_budget_flops, not both (the budget derives max_steps)")
        if self.objective == "mlm_nsp" and self.micro_batch_size < 2:
            raise ValueError(
                "objective 'mlm_nsp' takes each random next segment from another row of the micro-batch: "
                f"micro_batch_size must be at least 2, got {self.micro_batch_size}"
            )
        if self.objective in ("mlm_nsp", "mlm_sop") and not self.masking.dynamic:
            raise ValueError(
                f"masking.dynamic false with objective {self.objective!r}: sentence pairs are cut afresh "
                "each epoch, so their masks cannot stay fixed; use dynamic masking or objective 'mlm'"
            )
        if self.warmup_steps > self.max_steps and self.compute_budget_flops is None:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if self.precision == "fp16" and self.use_gpu is False:
            raise ValueError(
                "precision 'fp16' needs GPUs (use bf16 or fp32 on CPU); set use_gpu or precision"
            )
        if self.resources_per_worker is not None:
            self._check_resources(self.resources_per_worker)
            if self.use_gpu != "auto":
                self.worker_resources(self.use_gpu)
        return self

    def _check_resources(self, resources: dict[str, float]) -> None:
        for name, amount in resources.items():
            if amount < 0:
                raise ValueError(f"resources_per_worker.{name}: must not be negative, got {amount}")
        cpus = resources.get("CPU")
        if cpus is not None and cpus <= 0:
            raise ValueError(f"resources_per_worker.CPU: a worker needs a CPU share above 0, got {cpus}")
        if cpus is not None and "cpus_per_worker" in self.model_fields_set and cpus != self.cpus_per_worker:
            raise ValueError(
                f"resources_per_worker.CPU ({cpus}) disagrees with cpus_per_worker "
                f"({self.cpus_per_worker}): set only one of them"
            )

    def worker_resources(self, use_gpu: bool) -> dict[str, float]:
        """The Ray resources one worker reserves once `use_gpu` is resolved; ValueError when inconsistent."""
        if self.resources_per_worker is None:
            return {"CPU": float(self.cpus_per_worker), **({"GPU": 1.0} if use_gpu else {})}
        resources = {"CPU": float(self.cpus_per_worker), **self.resources_per_worker}
        gpus = resources.get("GPU", 0.0)
        if use_gpu and gpus <= 0:
            raise ValueError(
                f"resources_per_worker.GPU is {gpus} but the workers train on GPU (use_gpu "
                f"{str(self.use_gpu).lower()}): give each worker a GPU share above 0, or set use_gpu false"
            )
        if not use_gpu and gpus > 0:
            raise ValueError(
                f"resources_per_worker.GPU is {gpus} but the workers train on CPU (use_gpu "
                f"{str(self.use_gpu).lower()}): drop the GPU key or set use_gpu true"
            )
        return resources

    def compiles(self, use_gpu: bool) -> bool:
        """Whether the workers compile the model ("auto" resolved for their device)."""
        return use_gpu if self.compile == "auto" else self.compile

    def attention_implementation(self, use_gpu: bool, seq_len: int) -> str:
        """The attention kernel the workers use ("auto" resolved for their device and sequence length)."""
        if self.attention != "auto":
            return self.attention
        return "sdpa" if use_gpu or seq_len > EAGER_ATTENTION_MAX_LENGTH else "eager"

    def vocab_multiple(self, use_gpu: bool) -> int:
        """`vocab_multiple_of` ("auto" resolved for the workers' device)."""
        if self.vocab_multiple_of == "auto":
            return GPU_VOCAB_MULTIPLE if use_gpu else 1
        return self.vocab_multiple_of

    def padded_vocab_size(self, vocab_size: int, use_gpu: bool) -> int:
        """`vocab_size` rounded up to `vocab_multiple_of` ("auto" resolved for the workers' device)."""
        return pad_to_multiple(vocab_size, self.vocab_multiple(use_gpu))

    def device_choices(self, use_gpu: bool, seq_len: int) -> dict[str, bool | int | str]:
        """The settings whose "auto" depends on the workers' device, as the workers resolve them.

        The pre-training recipe holds these, not "auto": a GPU run pads the vocabulary, compiles and
        uses another attention kernel than a CPU run of the same config, so the two are different
        models and a store shared by both must not hand one's output to the other.
        """
        return {
            "compile": self.compiles(use_gpu),
            "attention": self.attention_implementation(use_gpu, seq_len),
            "vocab_multiple_of": self.vocab_multiple(use_gpu),
        }

    def adamw_options(self) -> dict[str, bool]:
        """torch.optim.AdamW keyword arguments that pick its implementation."""
        choice = "fused" if self.adamw == "auto" else self.adamw
        return {"fused": choice == "fused", "foreach": choice == "foreach"}

    @property
    def threads_per_worker(self) -> int:
        """torch threads per worker: the worker's whole CPUs (at least one)."""
        cpus = (self.resources_per_worker or {}).get("CPU", self.cpus_per_worker)
        return max(1, int(cpus))

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.num_workers
