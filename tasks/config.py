"""Typed configs for downstream tasks; the task lists accept exactly the names in the registries.

Adding a task: a config class here with `type: Literal["..."]` (its data-path fields named in
`data_fields`, their default hub fallbacks in `hub`), one `TaskSpec` registry entry, and the runner
module. The `FinetuneConfig` / `EvaluationConfig` list types are built from the registries.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass
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
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
WIKITEXT2_HUB = {"path": f"hf://Salesforce/wikitext?config={WIKITEXT_HF_CONFIG}&split=validation"}


def hub_fallbacks(defaults: dict[str, str]) -> Any:
    """The `hub` field of a task: data field -> hf:// data set read when that field's local path
    finds nothing (no data directory, or no match). `hub: {}` turns the fallbacks off.

    Applied to the data field before any stage runs, so the recipe holds the data set that was read
    (pinned to a commit), never this field itself.
    """
    return operational(defaults)


class TaskConfig(StrictModel):
    """Base of every task config: `type` is the registry key (subclasses narrow it to theirs), `id`
    names the instance (stage and output names; default: the type), so one type can run several
    times in a config under different ids."""

    # The fields naming a data file (relative to the data dir) or an hf:// data set.
    data_fields: ClassVar[tuple[str, ...]] = ()

    type: str
    id: str = ""  # set to the type when not given (see _type_and_id)
    hub: dict[str, str] = hub_fallbacks({})

    @model_validator(mode="before")
    @classmethod
    def _type_and_id(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "name" in data:  # the key's spelling before task instances had ids
            if "type" in data:
                raise ValueError("give the task's `type` only (`name` is its old spelling)")
            data["type"] = data.pop("name")
        if "type" not in data:
            default = cls.model_fields["type"].default
            if isinstance(default, str):
                data["type"] = default
        if not data.get("id") and isinstance(data.get("type"), str):
            data["id"] = data["type"]
        return data

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not TASK_ID.fullmatch(value):
            raise ValueError(
                f"task id {value!r} must be letters, digits, '_' or '-' (it names stages and folders)"
            )
        return value

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


STRATEGIES = ("finetune", "linear_probe")
Strategy = Literal["finetune", "linear_probe"]
TrainSize = Annotated[int, Field(ge=1)] | Literal["all"]


@dataclass(frozen=True)
class Cell:
    """One point of a fine-tune task's grid: adaptation strategy, labeled examples (None: all of
    them) and seed index. Each cell runs once per init as its own stage."""

    strategy: str
    train_size: int | None
    seed_index: int

    @property
    def label(self) -> str:
        """`finetune-2000-s0`: the stage name's cell part."""
        return f"{self.strategy}-{self.train_size or 'all'}-s{self.seed_index}"

    def seed(self, run_seed: int) -> int:
        """The seed of this cell's training subset, data order and new weights: seed index k of a
        run with seed S trains with S + k, for both inits."""
        return run_seed + self.seed_index


class TargetConfig(StrictModel):
    """A dev metric value to reach: the report gives the epochs (and seconds) each init needed."""

    metric: str = "accuracy"
    value: float


class GridTaskConfig(TaskConfig):
    """A fine-tune task run over strategies x train sizes x seeds, each cell pretrained and random init.

    The grid fields are left out of each cell's recipe (the cell itself goes in): adding a seed or a
    train size computes only the new cells, and every existing one is reused."""

    # The dev metrics the task reports (`dev_<name>`); the first is the primary one.
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)

    # Which adaptation: `finetune` trains every weight; `linear_probe` freezes the pre-trained body
    # and trains one linear layer on its features ([CLS] for BERT, the extract token's state for
    # GPT, the mean encoder state for T5).
    strategies: list[Strategy] = operational(["finetune"], min_length=1)
    seeds: int = operational(3, ge=1)
    # Labeled examples per cell: seeded subsets, nested (a seed's 100 lie inside its 500); "all".
    train_sizes: list[TrainSize] = operational(["all"], min_length=1)
    # Without a dev_path, the dev set is carved out of the training data: this fraction, seeded.
    dev_fraction: float = Field(default=0.1, gt=0, lt=1)
    split_seed: int = 0  # the carve-out's and the max_dev_examples subset's seed (never the run's)
    max_dev_examples: int | None = Field(default=None, ge=1)  # a seeded subset bounds eval cost
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    # linear_probe trains only a head, which takes a larger step size.
    probe_learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    log_every: int = Field(default=1, ge=1)  # loss-curve resolution in optimizer steps
    target: TargetConfig | None = None
    # Score the dev set after every epoch (the epochs and seconds to reach `target`, and per-epoch
    # curves) or only after the last. None: every epoch when a target is set, else only the last.
    eval_every_epoch: bool | None = None
    # Store each cell's fine-tuned model in Hugging Face format: a full model per cell, so off by default.
    save_model: bool = False

    @property
    def evaluates_each_epoch(self) -> bool:
        return self.eval_every_epoch if self.eval_every_epoch is not None else self.target is not None

    @field_validator("strategies", "train_sizes")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        repeated = sorted({str(value) for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"values must be distinct; repeated: {', '.join(repeated)}")
        return values

    @model_validator(mode="after")
    def _target_is_a_metric(self) -> GridTaskConfig:
        if self.target is not None and self.target.metric not in self.metrics:
            raise ValueError(
                f"target.metric {self.target.metric!r} is not one of this task's metrics: {', '.join(self.metrics)}"
            )
        if self.target is not None and self.eval_every_epoch is False:
            raise ValueError(
                "a target needs the dev set scored after every epoch (the first epoch that reaches it): "
                "drop eval_every_epoch: false"
            )
        return self

    def cells(self) -> list[Cell]:
        return [
            Cell(strategy, None if size == "all" else int(size), seed_index)
            for strategy in self.strategies
            for size in self.train_sizes
            for seed_index in range(self.seeds)
        ]


class ColumnsConfig(StrictModel):
    """Which column holds what: a name, or a 0-based position (files without a header)."""

    text: str | int = "text"
    text_pair: str | int | None = None  # the second text of a pair task (entailment, similarity)
    label: str | int = "label"


class ClassificationConfig(GridTaskConfig):
    """Sequence classification of one text or a text pair into any number of classes.

    Heads follow each paradigm's paper: a classifier on [CLS] for masked LMs; GPT-1's input
    transformations for causal LMs ([Start] text [Extract], pairs [Start] A [Delim] B [Extract], new
    embeddings for those tokens, a linear head on [Extract], plus `aux_lm_weight` x the LM loss on
    the task's text); text to text with a task prefix for T5.
    """

    data_fields = ("train_path", "dev_path", "train_labels_path", "dev_labels_path")
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1")

    type: Literal["classification"] = "classification"
    # A file (csv, tsv, jsonl, parquet; relative to the data dir) or hf://dataset[?config=..&split=..].
    train_path: str
    # None: the dev set is carved out of train_path (dev_fraction, seeded by split_seed).
    dev_path: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"  # auto: by extension
    header: bool = True  # csv/tsv: the first line names the columns; false: use positions in columns
    # Labels in a separate line-aligned file (one per line), instead of a column.
    train_labels_path: str | None = None
    dev_labels_path: str | None = None
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    # The label set in class order. Values in the data are these names, or integer positions in this
    # list. None: read from the training data (integers in numeric order, else names sorted).
    labels: list[str | int] | None = None
    # GPT-1's similarity transform: a pair is scored in both orders and the two logit vectors summed
    # (causal and masked LMs; a text-to-text T5 reads the pair once, in order).
    symmetric: bool = False
    max_length: int = Field(default=128, ge=4)
    # Causal LMs: L = L_task + aux_lm_weight * L_LM on the task's inputs (GPT-1, section 3.2); 0: off.
    aux_lm_weight: float = Field(default=0.5, ge=0)
    # Encoder-decoder (T5) models, strategy finetune: the input is this template, the target the
    # label's word (label_words, default: the label names); accuracy is the exact match of the
    # greedy generation. Slots: {task} (the id), {text}, {text_pair}.
    text_to_text_template: str = "{task} sentence: {text}"
    text_to_text_pair_template: str = "{task} sentence1: {text} sentence2: {text_pair}"
    label_words: dict[str, str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationConfig:
        if self.symmetric and self.columns.text_pair is None:
            raise ValueError("symmetric: true scores a pair in both orders; set columns.text_pair")
        if self.dev_labels_path is not None and self.dev_path is None:
            raise ValueError("dev_labels_path needs dev_path (a carved dev set takes train's labels)")
        for field, template in (
            ("text_to_text_template", self.text_to_text_template),
            ("text_to_text_pair_template", self.text_to_text_pair_template),
        ):
            needed = {"text"} | ({"text_pair"} if field.endswith("pair_template") else set())
            allowed = {"task", "text", "text_pair"} if field.endswith("pair_template") else {"task", "text"}
            try:
                slots = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            except ValueError as err:
                raise ValueError(
                    f"{field}: {err} in {template!r} (write a literal brace as {{{{ or }}}})"
                ) from None
            if needed - slots or slots - allowed:
                raise ValueError(
                    f"{field} must contain {', '.join('{' + n + '}' for n in sorted(needed))} and no slot "
                    f"other than {', '.join('{' + n + '}' for n in sorted(allowed))}, got {template!r}"
                )
        if self.labels is not None:
            names = [str(label) for label in self.labels]
            if len(set(names)) != len(names) or not all(name.strip() for name in names):
                raise ValueError(f"labels must be distinct and non-empty, got {self.labels}")
            if len(names) < 2:
                raise ValueError(f"a classification task needs at least 2 labels, got {self.labels}")
        if self.label_words is not None:
            words = list(self.label_words.values())
            if len(set(words)) != len(words) or any(w != w.strip() or not w for w in words):
                raise ValueError(
                    f"label_words must be distinct, non-empty and unpadded (they are compared with "
                    f"stripped generations), got {self.label_words}"
                )
        return self


class Sst2FinetuneConfig(ClassificationConfig):
    """GLUE SST-2 as a classification preset: the local GLUE files or the hub's nyu-mll/glue sst2."""

    type: Literal["sst2"] = "sst2"  # type: ignore[assignment]
    train_path: str = "sst2/train.tsv"
    dev_path: str | None = "sst2/dev.tsv"
    hub: dict[str, str] = hub_fallbacks(SST2_HUB)
    columns: ColumnsConfig = Field(default_factory=lambda: ColumnsConfig(text="sentence", label="label"))
    labels: list[str | int] | None = Field(default_factory=lambda: list[str | int](["0", "1"]))
    max_length: int = Field(default=64, ge=4)
    learning_rate: float = Field(default=3e-4, gt=0)
    text_to_text_template: str = "sst2 sentence: {text}"
    label_words: dict[str, str] | None = Field(default_factory=lambda: {"0": "negative", "1": "positive"})


class Sst2IclConfig(TaskConfig):
    """SST-2 in-context learning: k demonstrations, label scored by continuation log-likelihood."""

    data_fields = ("train_path", "dev_path")

    type: Literal["sst2_icl"] = "sst2_icl"
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


class IclClassificationConfig(TaskConfig):
    """In-context classification of any classification data set: `shots` demonstrations from the
    train split rendered with `template`, each label's word (`label_words`, multi-token allowed)
    scored by log-likelihood after the query; raw and contextually calibrated accuracy per k over
    `num_orderings` demonstration draws. `random_labels: true` keeps the demonstrations' inputs but
    draws their labels at random (does ICL learn the mapping, or the format?)."""

    data_fields = ("train_path", "dev_path", "train_labels_path", "dev_labels_path")

    type: Literal["icl_classification"] = "icl_classification"
    # The data fields read as for `classification` (see docs/tasks.md).
    train_path: str
    dev_path: str | None = None
    dev_fraction: float = Field(default=0.1, gt=0, lt=1)
    split_seed: int = 0
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    header: bool = True
    train_labels_path: str | None = None
    dev_labels_path: str | None = None
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    labels: list[str | int] | None = None
    max_dev_examples: int | None = Field(default=None, ge=1)  # a seeded subset of the dev set
    # Slots: {text}, {text_pair} (pair tasks), {label} (the label word; last).
    template: str = "{text}\nAnswer: {label}"
    # Label name -> the word(s) scored for it; labels not named score their own name.
    label_words: dict[str, str] | None = None
    shots: list[int] = Field(default_factory=lambda: [0, 1, 5], min_length=1)
    num_orderings: int = 3
    # sum: the label word's summed log-likelihood; mean: per token (length-normalized), which keeps
    # long label words from losing by length alone.
    scoring: Literal["sum", "mean"] = "sum"
    calibrate: bool = True
    content_free_texts: list[str] = Field(default_factory=lambda: ["N/A", ""], min_length=1)
    random_labels: bool = False
    batch_size: int = operational(16, ge=1)  # throughput only
    max_length: int | None = Field(default=None, ge=8)

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_keys_as_text(cls, words: Any) -> Any:
        # YAML reads `0: negative` with an integer key; labels are compared as text.
        return {str(key): value for key, value in words.items()} if isinstance(words, dict) else words

    @model_validator(mode="after")
    def _prompt_fits_the_data(self) -> IclClassificationConfig:
        pair = self.columns.text_pair is not None
        for slot in ("{text}", "{label}") + (("{text_pair}",) if pair else ()):
            if self.template.count(slot) != 1:
                raise ValueError(f"template must contain {slot} exactly once, got {self.template!r}")
        if not pair and "{text_pair}" in self.template:
            raise ValueError("template has {text_pair} but columns.text_pair is not set")
        if not self.template.rstrip().endswith("{label}"):
            raise ValueError(
                f"template must end with {{label}} (the scored continuation), got {self.template!r}"
            )
        if not self.template.split("{label}")[0].replace("{text}", "").replace("{text_pair}", "").strip():
            raise ValueError("template needs some prompt text before {label}")
        if any(k < 0 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ValueError(f"shots must be distinct non-negative integers, got {self.shots}")
        if self.num_orderings < 3:
            raise ValueError(
                "num_orderings must be at least 3 so each k reports a spread over demonstration orderings"
            )
        if self.label_words is not None and any(not w.strip() for w in self.label_words.values()):
            raise ValueError(f"label_words must be non-empty, got {self.label_words}")
        return self


class WikitextPerplexityConfig(TaskConfig):
    """Token-level perplexity and bits per byte on WikiText-2 (raw) validation."""

    data_fields = ("path",)

    type: Literal["wikitext_perplexity"] = "wikitext_perplexity"
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


class PerplexityConfig(TaskConfig):
    """Perplexity and bits per byte of a causal LM on any text: a plain text file (.txt) scored as
    one text, or a table's text column (csv, tsv, jsonl, parquet, hf://), documents joined by a
    blank line. Several instances (different ids) compare corpora in one run."""

    data_fields = ("path",)

    type: Literal["perplexity"] = "perplexity"
    path: str
    format: Literal["auto", "text", "csv", "tsv", "jsonl", "parquet"] = "auto"
    text_column: str | int = "text"
    split: str = "validation"  # hf:// data sets without ?split=
    max_documents: int | None = Field(default=None, ge=1)  # the first N documents of a table
    max_characters: int | None = Field(default=2_000_000, ge=1)  # bounds the cost; None: all
    max_length: int | None = Field(default=None, ge=2)  # window length; None: the model's n_positions
    # New tokens scored per window; None: max_length // 2 (see wikitext_perplexity).
    stride: int | None = Field(default=None, ge=1)
    batch_size: int = operational(8, ge=1)  # throughput only

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexityConfig:
        if self.stride is not None and self.max_length is not None and self.stride > self.max_length:
            raise ValueError(f"stride ({self.stride}) must not exceed max_length ({self.max_length})")
        return self


class MlmAccuracyConfig(TaskConfig):
    """Masked-token accuracy and loss on the validation shards, with a fixed masking seed."""

    type: Literal["mlm_accuracy"] = "mlm_accuracy"
    max_sequences: int | None = Field(default=2000, ge=1)
    batch_size: int = operational(32, ge=1)  # throughput only
    mask_probability: float = Field(default=0.15, gt=0, lt=1)
    # Fixed, independent of the run seed, so the metric compares across runs.
    mask_seed: int = 0


class TokenClassificationConfig(GridTaskConfig):
    """Tagging every word (NER, chunking, POS): CoNLL files (one token per line, blank lines between
    sentences, `-DOCSTART-` lines skipped) or tables with a token-list and a tag-list column. IOB1
    tags (CoNLL-2003's original scheme) are converted to BIO; each word's tag is learnt and predicted
    on its first sub-token. Scored at the entity level by conlleval's chunk rules, as seqeval's
    default mode (micro precision, recall, F1), and by word accuracy."""

    data_fields = ("train_path", "dev_path")
    metrics: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "accuracy")

    type: Literal["token_classification"] = "token_classification"
    train_path: str
    dev_path: str | None = None
    # auto: .txt/.conll files are CoNLL columns; other extensions as for classification.
    format: Literal["auto", "conll", "csv", "tsv", "jsonl", "parquet"] = "auto"
    # CoNLL columns (0-based; -1 is the last): the word and its tag.
    conll_token_column: int = 0
    conll_tag_column: int = -1
    # Table formats: the columns holding a sentence's tokens and its tags (lists).
    columns: dict[str, str | int] = Field(
        default_factory=lambda: dict[str, str | int]({"tokens": "tokens", "tags": "tags"})
    )
    # The tags' scheme in the data: iob1 (converted to BIO), bio, or auto (iob1 when an I- tag
    # follows a tag of another type or O, or starts a sentence, else bio).
    scheme: Literal["auto", "iob1", "bio"] = "auto"
    # The tag set in class order (integer tags in a table are positions in it); None: read from the
    # training data ("O" first, the rest sorted), or a hub data set's tag class names.
    labels: list[str] | None = None
    max_length: int = Field(default=128, ge=4)
    learning_rate: float = Field(default=1e-4, gt=0)

    @field_validator("columns")
    @classmethod
    def _tokens_and_tags(cls, columns: dict[str, str | int]) -> dict[str, str | int]:
        unknown = sorted(set(columns) - {"tokens", "tags"})
        if unknown:
            raise ValueError(f"columns takes `tokens` and `tags`; unknown: {', '.join(unknown)}")
        return {"tokens": "tokens", "tags": "tags", **columns}

    @field_validator("labels")
    @classmethod
    def _distinct_tags(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and (len(set(labels)) != len(labels) or not all(t.strip() for t in labels)):
            raise ValueError(f"labels must be distinct and non-empty, got {labels}")
        return labels


class ExtractiveQaConfig(GridTaskConfig):
    """SQuAD v1.1-style extractive QA: start/end heads over the context; long contexts split into
    windows with a stride; answers scored by exact match and F1 after the official SQuAD answer
    normalization (lowercase, no punctuation or articles, whitespace collapsed), max over references."""

    data_fields = ("train_path", "dev_path")
    metrics: ClassVar[tuple[str, ...]] = ("f1", "exact_match")

    type: Literal["extractive_qa"] = "extractive_qa"
    # A SQuAD JSON file ({"data": [{"title", "paragraphs": [{"context", "qas"}]}]}), or a table with
    # question, context and answers ({"text": [...], "answer_start": [...]}) columns (hf://squad).
    train_path: str
    dev_path: str | None = None
    format: Literal["auto", "squad", "jsonl", "parquet"] = "auto"
    # Table formats: which column holds what (title and id are optional: without a title, a carved
    # dev set groups rows by context; without an id, a question is named by its row).
    columns: dict[str, str | int] = Field(
        default_factory=lambda: dict[str, str | int](
            question="question", context="context", answers="answers", title="title", id="id"
        )
    )
    # A dev set carved from train_path keeps whole articles (titles) on one side, so no context is in both.
    max_length: int = Field(default=384, ge=16)
    # Tokens of overlap between a context's windows; below half of max_length, since a question is
    # cut to at most half of a window.
    doc_stride: int = Field(default=128, ge=1)
    max_answer_length: int = Field(default=30, ge=1)  # in tokens
    learning_rate: float = Field(default=1e-4, gt=0)

    @model_validator(mode="after")
    def _windows_advance(self) -> ExtractiveQaConfig:
        if self.doc_stride >= self.max_length // 2:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be less than half of max_length ({self.max_length}): "
                "a window's context part may be only half of it, and consecutive windows must advance"
            )
        unknown = sorted(set(self.columns) - {"question", "context", "answers", "title", "id"})
        if unknown:
            raise ValueError(
                f"columns: unknown role(s) {unknown}; roles: question, context, answers, title, id"
            )
        return self


class MultipleChoiceConfig(GridTaskConfig):
    """A context (question, goal, premise) and N options, one correct: each option scored as one
    sequence, softmax over the options (BERT's multiple choice; GPT-1's one sequence per option
    through `<|start|> context <|delim|> option <|extract|>`; T5 scores each option as the decoder's
    target given the context, by its summed log-probability). Every row has the same number of options."""

    data_fields = ("train_path", "dev_path", "train_labels_path", "dev_labels_path")

    type: Literal["multiple_choice"] = "multiple_choice"
    train_path: str
    dev_path: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    header: bool = True
    # The correct option per row from a separate line-aligned file (PIQA's valid-labels.lst).
    train_labels_path: str | None = None
    dev_labels_path: str | None = None
    # context: one column; options: a list of columns (one option each) or one column holding a list;
    # label: the correct option's 0-based index (or, with label_offset, 1-based and so on).
    columns: dict[str, Any] = Field(
        default_factory=lambda: {"context": "context", "options": "options", "label": "label"}
    )
    label_offset: int = 0  # subtracted from the label values (1 for 1-based answer numbers)
    max_length: int = Field(default=128, ge=8)
    learning_rate: float = Field(default=1e-4, gt=0)
    aux_lm_weight: float = Field(default=0.5, ge=0)  # GPT-1's auxiliary LM loss (causal LMs)

    @model_validator(mode="after")
    def _columns_complete(self) -> MultipleChoiceConfig:
        known = ("context", "options", "label")
        for name in self.columns:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"columns: unknown key {name!r}{hint} (keys: {', '.join(known)})")
        needed = ["context", "options"] + ([] if self.train_labels_path else ["label"])
        missing = [name for name in needed if name not in self.columns]
        if missing:
            raise ValueError(f"columns must name {', '.join(missing)} (a column name or 0-based position)")
        options = self.columns["options"]
        single = isinstance(options, str | int) and not isinstance(options, bool)
        several = isinstance(options, list) and all(
            isinstance(o, str | int) and not isinstance(o, bool) for o in options
        )
        if not (single or several) or (several and (len(options) < 2 or len(set(options)) < len(options))):
            raise ValueError(
                "columns.options is one column holding each row's list of options, or a list of at "
                f"least 2 distinct columns (one option each); got {options!r}"
            )
        if self.dev_labels_path is not None and self.dev_path is None:
            raise ValueError("dev_labels_path needs dev_path (a carved dev set takes train's labels)")
        return self


ALL_OBJECTIVES = frozenset({"clm", "mlm", "mlm_nsp", "mlm_sop", "span"})
for _classification in (ClassificationConfig, Sst2FinetuneConfig):
    FINETUNE_TASKS.add(
        TaskSpec(
            _classification.model_fields["type"].default,
            _classification,
            ALL_OBJECTIVES,
            "lmforge.tasks.classification:run_classification",
        )
    )
for _family, _runner in (
    (TokenClassificationConfig, "lmforge.tasks.token_classification:run_token_classification"),
    (ExtractiveQaConfig, "lmforge.tasks.extractive_qa:run_extractive_qa"),
    (MultipleChoiceConfig, "lmforge.tasks.multiple_choice:run_multiple_choice"),
):
    FINETUNE_TASKS.add(TaskSpec(_family.model_fields["type"].default, _family, ALL_OBJECTIVES, _runner))
EVAL_TASKS.add(
    TaskSpec(
        "icl_classification",
        IclClassificationConfig,
        frozenset({"clm", "span"}),
        "lmforge.tasks.icl:run_icl_classification",
    )
)
EVAL_TASKS.add(
    TaskSpec("perplexity", PerplexityConfig, frozenset({"clm"}), "lmforge.tasks.perplexity:run_perplexity")
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

    type: Literal["wikitext_pseudo_perplexity"] = "wikitext_pseudo_perplexity"
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

    type: Literal["fill_mask_probes"] = "fill_mask_probes"
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

    type: Literal["generation_samples"] = "generation_samples"
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
    """`Annotated[Union[...], Discriminator]` over the registry's config classes, keyed by `type`.

    The union tags are class names so that validation errors read `tasks.0.shots`, not
    `tasks.0.sst2_icl.shots` (configbase drops capitalised location parts).
    """
    classes = registry.config_classes()
    if len(classes) == 1:
        return classes[0]
    tag_of_type = {spec.name: spec.config_cls.__name__ for _, spec in registry.items()}

    def discriminate(value: Any) -> str | None:
        if isinstance(value, dict):  # `name` is the key's old spelling
            kind = value.get("type", value.get("name"))
        else:
            kind = getattr(value, "type", None)
        return tag_of_type.get(kind) if isinstance(kind, str) else None

    members = tuple(Annotated[cls, Tag(cls.__name__)] for cls in classes)
    return Annotated[
        Union[members],  # noqa: UP007 - a runtime-built union needs the subscript form
        Discriminator(
            discriminate,
            custom_error_type="unknown_task",
            custom_error_message=f"`type` must be one of the {registry.kind}s: {', '.join(registry.names())}",
        ),
    ]


if TYPE_CHECKING:  # the type checker cannot follow a union built at import time
    FinetuneTaskConfig = GridTaskConfig
    EvalTaskConfig = TaskConfig
else:
    FinetuneTaskConfig = _task_union(FINETUNE_TASKS)
    EvalTaskConfig = _task_union(EVAL_TASKS)


def _configs(*configs: TaskConfig) -> list[TaskConfig]:
    return list(configs)


def _unique_ids(tasks: list[TaskConfig]) -> list[TaskConfig]:
    ids = [task.id for task in tasks]
    duplicates = sorted({task_id for task_id in ids if ids.count(task_id) > 1})
    if duplicates:
        # Outputs are keyed by task id (finetune/<id>/..., eval/<id>), so ids must be unique.
        raise ValueError(
            f"task ids must be unique; repeated: {', '.join(duplicates)} (give each instance its own `id`)"
        )
    return tasks


class FinetuneConfig(StrictModel):
    """Fine-tune tasks: each cell of each task's grid runs from the pretrained weights and from a random init."""

    tasks: list[FinetuneTaskConfig] = Field(
        default_factory=lambda: list[GridTaskConfig]([Sst2FinetuneConfig()])
    )

    _unique = field_validator("tasks")(_unique_ids)

    def tasks_for(self, objective: str) -> list[GridTaskConfig]:
        return [task for task in self.tasks if objective in FINETUNE_TASKS[task.type].applies_to]


class EvaluationConfig(StrictModel):
    """Eval tasks; a run executes only those whose `applies_to` holds the pretraining objective."""

    tasks: list[EvalTaskConfig] = Field(
        default_factory=lambda: _configs(Sst2IclConfig(), WikitextPerplexityConfig(), MlmAccuracyConfig())
    )

    _unique = field_validator("tasks")(_unique_ids)

    def tasks_for(self, objective: str) -> list[TaskConfig]:
        return [task for task in self.tasks if objective in EVAL_TASKS[task.type].applies_to]
