"""Typed configs for downstream tasks; the task lists accept exactly the names in the registries.

Adding a task: a config class here with `name: Literal["..."]` (its data-path fields named in
`data_fields`, their default hub fallbacks in `hub`), one `TaskSpec` registry entry, and the runner
module. The `FinetuneConfig` / `EvaluationConfig` list types are built from the registries.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from lmforge.core.configbase import StrictModel, operational
from lmforge.core.errors import ConfigError
from lmforge.infra.data_paths import is_hf_uri
from lmforge.tasks.data import SST2_HF_CONFIG, WIKITEXT_HF_CONFIG, parse_hf_uri
from lmforge.tasks.specs import EVAL_TASKS, FINETUNE_TASKS, TaskRegistry, TaskSpec

SST2_HUB = {
    "train_path": f"hf://nyu-mll/glue?config={SST2_HF_CONFIG}&split=train",
    "dev_path": f"hf://nyu-mll/glue?config={SST2_HF_CONFIG}&split=validation",
}
WIKITEXT2_HUB = {"path": f"hf://Salesforce/wikitext?config={WIKITEXT_HF_CONFIG}&split=validation"}


def hub_fallbacks(defaults: dict[str, str]) -> Any:
    """The `hub` field of a task: data field -> hf:// data set read when that field's local path
    finds nothing (no data directory, or no match). `hub: {}` turns the fallbacks off.

    Applied to the data field before any stage runs, so the recipe holds the data set that was read
    (pinned to a commit), never this field itself.
    """
    return operational(defaults)


class TaskConfig(StrictModel):
    """Base of every task config; subclasses narrow `name` to their registry key."""

    # The fields naming a data file (relative to the data dir) or an hf:// data set.
    data_fields: ClassVar[tuple[str, ...]] = ()

    name: str
    hub: dict[str, str] = hub_fallbacks({})

    @field_validator("hub")
    @classmethod
    def _hub_names_data_fields(cls, hub: dict[str, str]) -> dict[str, str]:
        for field, uri in hub.items():
            if field not in cls.data_fields:
                close = difflib.get_close_matches(field, cls.data_fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"unknown data field {field!r}{hint} (data fields: {', '.join(cls.data_fields) or 'none'})"
                )
            if not is_hf_uri(uri):
                raise ValueError(
                    f"{field}: a hub fallback is hf://<dataset>[?config=..&split=..], got {uri!r}"
                )
            try:
                parse_hf_uri(uri, field, None, "validation")
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return hub


class Sst2FinetuneConfig(TaskConfig):
    """SST-2 sequence classification; the same budget for the pretrained and the random-init model."""

    data_fields = ("train_path", "dev_path")

    name: Literal["sst2"] = "sst2"
    # Local paths resolve against the data dir; `hf://nyu-mll/glue` loads GLUE sst2 from the hub.
    train_path: str = "sst2/train.tsv"
    dev_path: str = "sst2/dev.tsv"
    hub: dict[str, str] = hub_fallbacks(SST2_HUB)
    train_size: int | None = Field(default=2000, ge=1)  # seeded random subset; None = all rows
    max_length: int = Field(default=64, ge=2)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    log_every: int = Field(default=1, ge=1)  # loss-curve resolution in optimizer steps
    # Encoder-decoder (span/T5) models only: text to text, as T5 was fine-tuned on GLUE. The input
    # is prefix + sentence, the target label_words[label]; accuracy is the exact match of the
    # greedy generation. Classifier-head models ignore both fields.
    text_to_text_prefix: str = "sst2 sentence: "
    label_words: list[str] = Field(default_factory=lambda: ["negative", "positive"])

    @field_validator("label_words")
    @classmethod
    def _two_label_words(cls, words: list[str]) -> list[str]:
        if len(words) != 2 or not all(word.strip() for word in words) or len(set(words)) != 2:
            raise ValueError(f"label_words must be two different non-empty words (label 0, 1), got {words}")
        if any(word != word.strip() for word in words):
            raise ValueError(
                f"label_words are compared with stripped generations: remove the spaces in {words}"
            )
        return words


class Sst2IclConfig(TaskConfig):
    """SST-2 in-context learning: k demonstrations, label scored by continuation log-likelihood."""

    data_fields = ("train_path", "dev_path")

    name: Literal["sst2_icl"] = "sst2_icl"
    train_path: str = "sst2/train.tsv"
    dev_path: str = "sst2/dev.tsv"
    hub: dict[str, str] = hub_fallbacks(SST2_HUB)
    shots: list[int] = Field(default_factory=lambda: [0, 1, 5], min_length=1)
    num_orderings: int = 3
    max_examples: int | None = Field(default=None, ge=1)  # None: the full dev set
    template: str = "Review: {text}\nSentiment: {label}"
    label_words: dict[int, str] = Field(default_factory=lambda: {0: "negative", 1: "positive"})
    batch_size: int = operational(16, ge=1)  # throughput only
    # None: the model's n_positions; for an encoder-decoder (T5's relative positions), no limit.
    max_length: int | None = Field(default=None, ge=8)
    # Contextual calibration (Zhao et al. 2021): also report accuracy with the label probabilities
    # divided by their average over these content-free inputs, given the same demonstrations.
    calibrate: bool = True
    content_free_texts: list[str] = Field(default_factory=lambda: ["N/A", ""], min_length=1)

    @field_validator("shots")
    @classmethod
    def _shots_valid(cls, shots: list[int]) -> list[int]:
        if any(k < 0 for k in shots) or len(set(shots)) != len(shots):
            raise ValueError(f"shots must be distinct non-negative integers, got {shots}")
        return shots

    @field_validator("num_orderings")
    @classmethod
    def _enough_orderings(cls, value: int) -> int:
        if value < 3:
            raise ValueError(
                "num_orderings must be at least 3 so each k reports a spread over demonstration orderings"
            )
        return value

    @field_validator("template")
    @classmethod
    def _template_has_slots(cls, template: str) -> str:
        for slot in ("{text}", "{label}"):
            if template.count(slot) != 1:
                raise ValueError(f"template must contain {slot} exactly once, got {template!r}")
        if template.index("{label}") < template.index("{text}"):
            raise ValueError(f"template must put {{label}} after {{text}}, got {template!r}")
        if not template.split("{label}")[0].replace("{text}", "").strip():
            raise ValueError("template needs some prompt text before {label}")
        return template

    @field_validator("label_words")
    @classmethod
    def _binary_labels(cls, words: dict[int, str]) -> dict[int, str]:
        if sorted(words) != [0, 1] or not all(word.strip() for word in words.values()):
            raise ValueError(f"label_words must map 0 and 1 to non-empty words, got {words}")
        if len(set(words.values())) != 2:
            raise ValueError(f"label_words must be two different words, got {words}")
        return words


class WikitextPerplexityConfig(TaskConfig):
    """Token-level perplexity and bits per byte on WikiText-2 (raw) validation."""

    data_fields = ("path",)

    name: Literal["wikitext_perplexity"] = "wikitext_perplexity"
    path: str = "wikitext2_raw/valid.txt"  # or hf://Salesforce/wikitext
    hub: dict[str, str] = hub_fallbacks(WIKITEXT2_HUB)
    max_length: int | None = Field(default=None, ge=2)  # window length; None: the model's n_positions
    # New tokens scored per window, each window moving on by this much; None: max_length // 2.
    # stride == max_length is the chunked evaluation (disjoint windows); smaller strides give every
    # token past the first window at least max_length - stride + 1 tokens of context.
    stride: int | None = Field(default=None, ge=1)
    batch_size: int = operational(8, ge=1)  # throughput only

    @model_validator(mode="after")
    def _stride_fits(self) -> WikitextPerplexityConfig:
        if self.stride is not None and self.max_length is not None and self.stride > self.max_length:
            raise ValueError(
                f"stride ({self.stride}) must not exceed max_length ({self.max_length}): a window of "
                "max_length tokens predicts at most max_length new tokens"
            )
        return self


class MlmAccuracyConfig(TaskConfig):
    """Masked-token accuracy and loss on the validation shards, with a fixed masking seed."""

    name: Literal["mlm_accuracy"] = "mlm_accuracy"
    max_sequences: int | None = Field(default=2000, ge=1)
    batch_size: int = operational(32, ge=1)  # throughput only
    mask_probability: float = Field(default=0.15, gt=0, lt=1)
    # Fixed, independent of the run seed, so the metric compares across runs.
    mask_seed: int = 0


FINETUNE_TASKS.add(
    TaskSpec(
        "sst2",
        Sst2FinetuneConfig,
        frozenset({"clm", "mlm", "mlm_nsp", "mlm_sop", "span"}),
        "lmforge.tasks.finetune:run_sst2_finetune",
    )
)
EVAL_TASKS.add(
    TaskSpec("sst2_icl", Sst2IclConfig, frozenset({"clm", "span"}), "lmforge.tasks.icl:run_sst2_icl")
)
EVAL_TASKS.add(
    TaskSpec(
        "wikitext_perplexity",
        WikitextPerplexityConfig,
        frozenset({"clm"}),
        "lmforge.tasks.perplexity:run_wikitext_perplexity",
    )
)
EVAL_TASKS.add(
    TaskSpec(
        "mlm_accuracy",
        MlmAccuracyConfig,
        # Reads validation shards as [CLS] ... [SEP] rows: the mlm packing's, not the pair packing's.
        frozenset({"mlm"}),
        "lmforge.tasks.mlm_accuracy:run_mlm_accuracy",
    )
)


class WikitextPseudoPerplexityConfig(TaskConfig):
    """Pseudo-perplexity of a masked LM on WikiText-2 (raw) validation (Salazar et al. 2020)."""

    data_fields = ("path",)

    name: Literal["wikitext_pseudo_perplexity"] = "wikitext_pseudo_perplexity"
    path: str = "wikitext2_raw/valid.txt"  # or hf://Salesforce/wikitext
    hub: dict[str, str] = hub_fallbacks(WIKITEXT2_HUB)
    # Window length including the [CLS]/[SEP] wrappers; None: the model's max_position_embeddings.
    max_length: int | None = Field(default=None, ge=3)
    # Text tokens scored per window, each window moving on by this much. Every token costs one
    # forward of a full window whatever the stride, so the default 1 (each token near its window's
    # centre) gives the most two-sided context for free; stride == the body length is chunked.
    stride: int = Field(default=1, ge=1)
    # Only the first max_tokens text tokens are scored (with context from the whole text): the cost
    # is max_tokens forwards of max_length tokens. None: every token.
    max_tokens: int | None = Field(default=4096, ge=1)
    batch_size: int = operational(64, ge=1)  # masked copies per forward; throughput only

    @model_validator(mode="after")
    def _stride_fits(self) -> WikitextPseudoPerplexityConfig:
        if self.max_length is not None and self.stride > self.max_length - 2:
            raise ValueError(
                f"stride ({self.stride}) must not exceed max_length - 2 ({self.max_length - 2}): a window "
                "scores at most its text tokens, max_length less the [CLS]/[SEP] wrappers"
            )
        return self


MASK_PLACEHOLDER = "{mask}"
FILL_MASK_PROBES = (
    "The capital of France is {mask}.",
    "Paris is the capital and largest city of {mask}.",
    "The Atlantic {mask} lies between Europe and North America.",
    "Water freezes at zero degrees {mask}.",
    "The sun rises in the {mask} and sets in the west.",
    "The keys to the cabinet {mask} on the table.",
    "Yesterday she {mask} to the market to buy bread.",
    "He was born in 1950 and died in {mask}.",
)


class FillMaskProbesConfig(TaskConfig):
    """Top-k fill-mask predictions of a masked LM on fixed probe sentences (a qualitative check)."""

    name: Literal["fill_mask_probes"] = "fill_mask_probes"
    # Sentences with exactly one `{mask}`, replaced by the tokenizer's mask token.
    probes: list[str] = Field(default_factory=lambda: list(FILL_MASK_PROBES), min_length=1)
    top_k: int = Field(default=5, ge=1)

    @field_validator("probes")
    @classmethod
    def _one_mask_each(cls, probes: list[str]) -> list[str]:
        for index, probe in enumerate(probes):
            if probe.count(MASK_PLACEHOLDER) != 1:
                raise ValueError(
                    f"probe {index} must contain {MASK_PLACEHOLDER} exactly once (found "
                    f"{probe.count(MASK_PLACEHOLDER)}): {probe!r}"
                )
        repeated = sorted({probe for probe in probes if probes.count(probe) > 1})
        if repeated:
            raise ValueError(f"probes must be distinct; repeated: {repeated}")
        return probes


EVAL_TASKS.add(
    TaskSpec(
        "wikitext_pseudo_perplexity",
        WikitextPseudoPerplexityConfig,
        frozenset({"mlm", "mlm_nsp", "mlm_sop"}),
        "lmforge.tasks.pseudo_perplexity:run_wikitext_pseudo_perplexity",
    )
)
EVAL_TASKS.add(
    TaskSpec(
        "fill_mask_probes",
        FillMaskProbesConfig,
        frozenset({"mlm", "mlm_nsp", "mlm_sop"}),
        "lmforge.tasks.fill_mask:run_fill_mask_probes",
    )
)


class GenerationSamplesConfig(TaskConfig):
    """Seeded samples of any pre-trained model: each prompt's `{mask}` is what the model writes (a
    causal LM continues the text before it, a masked LM fills it, T5 fills it as a span)."""

    name: Literal["generation_samples"] = "generation_samples"
    prompts: list[str] = Field(
        default_factory=lambda: [
            "The capital of France is {mask}.",
            "In 1905, Albert Einstein published {mask}.",
            "The river flows through the {mask} of the city.",
        ],
        min_length=1,
    )
    max_new_tokens: int = Field(default=20, ge=1)
    top_k: int = Field(default=50, ge=1)
    # None: the run's seed.
    seed: int | None = None

    @field_validator("prompts")
    @classmethod
    def _one_placeholder(cls, prompts: list[str]) -> list[str]:
        for index, prompt in enumerate(prompts):
            if prompt.count(MASK_PLACEHOLDER) != 1:
                raise ValueError(f"prompt {index} must contain {MASK_PLACEHOLDER} exactly once: {prompt!r}")
        return prompts


EVAL_TASKS.add(
    TaskSpec(
        "generation_samples",
        GenerationSamplesConfig,
        frozenset({"clm", "mlm", "mlm_nsp", "mlm_sop", "span"}),
        "lmforge.tasks.samples:run_generation_samples",
    )
)


def _task_union(registry: TaskRegistry) -> Any:
    """`Annotated[Union[...], Discriminator]` over the registry's config classes, keyed by `name`.

    The union tags are class names so that validation errors read `tasks.0.shots`, not
    `tasks.0.sst2_icl.shots` (configbase drops capitalised location parts).
    """
    classes = registry.config_classes()
    if len(classes) == 1:
        return classes[0]
    tag_of_name = {spec.name: spec.config_cls.__name__ for _, spec in registry.items()}

    def discriminate(value: Any) -> str | None:
        name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
        return tag_of_name.get(name) if isinstance(name, str) else None

    members = tuple(Annotated[cls, Tag(cls.__name__)] for cls in classes)
    return Annotated[
        Union[members],  # noqa: UP007 - a runtime-built union needs the subscript form
        Discriminator(
            discriminate,
            custom_error_type="unknown_task",
            custom_error_message=f"`name` must be one of the {registry.kind}s: {', '.join(registry.names())}",
        ),
    ]


if TYPE_CHECKING:  # the type checker cannot follow a union built at import time
    FinetuneTaskConfig = TaskConfig
    EvalTaskConfig = TaskConfig
else:
    FinetuneTaskConfig = _task_union(FINETUNE_TASKS)
    EvalTaskConfig = _task_union(EVAL_TASKS)


def _configs(*configs: TaskConfig) -> list[TaskConfig]:
    return list(configs)


def _unique_names(tasks: list[TaskConfig]) -> list[TaskConfig]:
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        # Outputs are keyed by task name (finetune/<name>/..., eval/<name>), so names must be unique.
        raise ValueError(f"each task may appear once; repeated: {', '.join(duplicates)}")
    return tasks


class FinetuneConfig(StrictModel):
    """Fine-tune tasks, each run twice: from the pretrained weights and from a random init."""

    tasks: list[FinetuneTaskConfig] = Field(default_factory=lambda: _configs(Sst2FinetuneConfig()))

    _unique = field_validator("tasks")(_unique_names)

    def tasks_for(self, objective: str) -> list[TaskConfig]:
        return [task for task in self.tasks if objective in FINETUNE_TASKS[task.name].applies_to]


class EvaluationConfig(StrictModel):
    """Eval tasks; a run executes only those whose `applies_to` holds the pretraining objective."""

    tasks: list[EvalTaskConfig] = Field(
        default_factory=lambda: _configs(Sst2IclConfig(), WikitextPerplexityConfig(), MlmAccuracyConfig())
    )

    _unique = field_validator("tasks")(_unique_names)

    def tasks_for(self, objective: str) -> list[TaskConfig]:
        return [task for task in self.tasks if objective in EVAL_TASKS[task.name].applies_to]
