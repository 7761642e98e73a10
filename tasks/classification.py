"""Sequence classification from any table: one text or a pair, any number of classes.

One cell of a task's grid (strategy, train size, seed) for one init. Heads follow each paradigm's
paper:

- masked LMs (BERT): `[CLS] A [SEP] B [SEP]` with token types, the classifier on the pooled [CLS];
- causal LMs (GPT-1, Radford et al. 2018, section 3.3): `<|start|> A <|delim|> B <|extract|>` with
  new embeddings for those tokens, a linear head on the last (`<|extract|>`) state, and
  `L = L_task + aux_lm_weight * L_LM` on the task's own text; similarity tasks sum both orders;
- encoder-decoders (T5): text to text, `{task} sentence: ...` -> the label's word, scored by exact
  match of the greedy generation; a linear probe uses T5's classification head on the EOS state.

`linear_probe` freezes everything the checkpoint provides and trains only the weights the task
adds; `finetune` trains all of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressTarget
from lmforge.tasks.config import Cell, ClassificationConfig
from lmforge.tasks.finetune import (
    IGNORE_INDEX,
    Batch,
    Init,
    cell_metrics,
    fit_cell,
    freeze_all_but,
    instantiate,
    new_parameter_names,
    pad_right,
    seeded_order,
    with_eos,
    write_cell,
)
from lmforge.tasks.modeling import (
    is_seq2seq,
    load_tokenizer,
    max_positions,
    pretrain_meta,
    spare_token_ids,
    write_json,
)
from lmforge.tasks.readers import (
    LabelSet,
    Table,
    attach_labels,
    carve_split,
    column_name,
    discover_labels,
    read_label_file,
    read_table,
)

log = get_logger(__name__)
# GPT-1's input transformation tokens (new embeddings, initialised to the mean embedding).
START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"
TASK_META_FILE = "lmforge_task.json"
LABEL_COLUMN = "__label__"  # the column a separate label file's values are read into


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int


@dataclass
class TaskData:
    """A task's examples, its label set, and what was left out of each split and why."""

    train: list[Example]
    dev: list[Example]
    labels: LabelSet
    dev_source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Data


def read_split(
    config: ClassificationConfig,
    path: str,
    labels_path: str | None,
    data_dir: Path | None,
    key: str,
    split: str,
) -> tuple[Table, str]:
    """The split's table and the name of its label column (a separate label file becomes one).

    The table is named by the configured path, not the resolved one: notes about its rows go into
    metrics.json, which must not depend on where the data directory is."""
    table = read_table(
        path,
        data_dir,
        f"{key}.{'train' if split == 'train' else 'dev'}_path",
        format=config.format,
        header=config.header,
        split=split,
    )
    resolved = table.source
    table = dataclasses.replace(
        table, source=path, skipped=[note.replace(resolved, path, 1) for note in table.skipped]
    )
    if labels_path is None:
        return table, column_name(table, config.columns.label, f"{key}.columns.label")
    labels_key = f"{key}.{'train' if split == 'train' else 'dev'}_labels_path"
    labels = read_label_file(labels_path, data_dir, labels_key)
    return attach_labels(table, labels, LABEL_COLUMN, labels_key, labels_path), LABEL_COLUMN


def examples_of(
    config: ClassificationConfig, table: Table, label_column: str, labels: LabelSet, key: str
) -> tuple[list[Example], list[str]]:
    """Rows as examples; a row with an empty text is left out and listed (a label outside the
    label set is an error naming it and the row)."""
    text = column_name(table, config.columns.text, f"{key}.columns.text")
    pair = (
        None
        if config.columns.text_pair is None
        else column_name(table, config.columns.text_pair, f"{key}.columns.text_pair")
    )
    examples, skipped = [], []
    for index, row in enumerate(table.rows):
        first = "" if row.get(text) is None else str(row[text]).strip()
        second = None if pair is None else ("" if row.get(pair) is None else str(row[pair]).strip())
        if not first or second == "":
            skipped.append(f"{table.where(index)}: empty text")
            continue
        if row.get(label_column) is None or str(row[label_column]).strip() == "":
            skipped.append(f"{table.where(index)}: no label")
            continue
        label = labels.index_of(row[label_column], table.where(index), f"{key}.labels")
        examples.append(Example(first, second, label))
    return examples, skipped


def load_task_data(config: ClassificationConfig, data_dir: Path | None, key: str) -> TaskData:
    """Train and dev examples with one label set, read from the train split (or config.labels)."""
    train_table, train_label = read_split(
        config, config.train_path, config.train_labels_path, data_dir, key, "train"
    )
    values = [row.get(train_label) for row in train_table.rows]
    wheres = [train_table.where(i) for i in range(len(train_table.rows))]
    present = [(v, w) for v, w in zip(values, wheres, strict=True) if v is not None and str(v).strip() != ""]
    if not present:
        raise DataError(f"{key}.train_path: {train_table.source} has no labelled rows")
    labels = discover_labels(
        [v for v, _ in present],
        config.labels,
        f"{key}.labels",
        class_names=train_table.class_names.get(train_label),
        wheres=[w for _, w in present],
    )
    if len(labels.names) < 2:
        raise DataError(
            f"{key}: {train_table.source} has one label ({labels.names[0]!r}); classification needs at least 2"
        )
    train_examples, train_skipped = examples_of(config, train_table, train_label, labels, key)
    skipped = {"train": train_table.skipped + train_skipped}
    if config.dev_path is None:
        train_index, dev_index = carve_split(len(train_examples), config.dev_fraction, config.split_seed)
        dev_examples = [train_examples[i] for i in dev_index]
        train_examples = [train_examples[i] for i in train_index]
        dev_source = (
            f"{train_table.source} (a seeded {config.dev_fraction:g} of it, split_seed {config.split_seed})"
        )
    else:
        dev_table, dev_label = read_split(
            config, config.dev_path, config.dev_labels_path, data_dir, key, "validation"
        )
        dev_examples, dev_skipped = examples_of(config, dev_table, dev_label, labels, key)
        skipped["dev"] = dev_table.skipped + dev_skipped
        dev_source = config.dev_path
    for split, notes in skipped.items():
        if notes:
            log.warning("%s: %d %s row(s) left out, e.g. %s", key, len(notes), split, notes[0])
    for split, examples in (("train", train_examples), ("dev", dev_examples)):
        if not examples:
            reasons = "; ".join(skipped.get(split, [])[:3])
            raise DataError(f"{key}: no usable {split} example" + (f" ({reasons})" if reasons else ""))
    if config.max_dev_examples is not None and len(dev_examples) > config.max_dev_examples:
        chosen = sorted(seeded_order(len(dev_examples), config.split_seed)[: config.max_dev_examples])
        dev_examples = [dev_examples[i] for i in chosen]
    return TaskData(train_examples, dev_examples, labels, dev_source, skipped)


def subset(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded subset of `size` examples (all when None or too few), in the seed's order."""
    order = seeded_order(len(examples), seed)
    return [examples[i] for i in order[: size if size is not None else len(examples)]]


# ---------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(
    predictions: Sequence[int], gold: Sequence[int], num_classes: int
) -> dict[str, float]:
    """Accuracy and macro-F1. F1 is averaged over the classes present in the gold labels or the
    predictions (scikit-learn's convention), so a class missing from a small dev set does not
    count as 0; a prediction outside 0..n-1 (an invalid generation) is wrong for every class."""
    correct = sum(p == g for p, g in zip(predictions, gold, strict=True))
    present = sorted({label for label in (*gold, *predictions) if 0 <= label < num_classes})
    f1s = []
    for label in present:
        tp = sum(p == label and g == label for p, g in zip(predictions, gold, strict=True))
        fp = sum(p == label and g != label for p, g in zip(predictions, gold, strict=True))
        fn = sum(p != label and g == label for p, g in zip(predictions, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": correct / len(gold), "macro_f1": sum(f1s) / len(present) if present else 0.0}


def prefixed(metrics: dict[str, float], prefix: str = "dev_") -> dict[str, float]:
    return {f"{prefix}{name}": value for name, value in metrics.items()}


# ---------------------------------------------------------------------------------------------
# Heads per paradigm: each gives a model, a batch loss over training example indices, and a dev
# evaluation.


@dataclass
class Head:
    model: Any
    tokenizer: Any
    batch_loss: Callable[[list[int]], torch.Tensor]
    evaluate: Callable[[], dict[str, Any]]
    input_format: str
    meta: dict[str, Any] = field(default_factory=dict)


def model_family(model_dir: Path) -> str:
    """ "seq2seq" (T5), "causal" (GPT) or "encoder" (BERT), from the export's meta or the config."""
    if is_seq2seq(model_dir):
        return "seq2seq"
    auto_class = pretrain_meta(model_dir).get("auto_model_class")
    if isinstance(auto_class, str):
        return "causal" if auto_class == "AutoModelForCausalLM" else "encoder"
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(model_dir).architectures or []
    causal = any(name.endswith(("LMHeadModel", "ForCausalLM")) for name in architectures)
    return "causal" if causal else "encoder"


def truncate_pair(
    first: list[int], second: list[int] | None, budget: int
) -> tuple[list[int], list[int] | None]:
    """Cut the longer of the two texts one token at a time until both fit `budget` (longest first)."""
    first = list(first)
    second = None if second is None else list(second)
    while len(first) + (len(second) if second is not None else 0) > budget:
        if second is not None and len(second) > len(first):
            second.pop()
        else:
            first.pop()
    return first, second


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def classifier_config(model_dir: Path, labels: LabelSet, pad_token_id: int | None) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(labels.names),
        id2label=dict(enumerate(labels.names)),
        label2id={name: i for i, name in enumerate(labels.names)},
        pad_token_id=pad_token_id,
    )


def build_sequence_classifier(
    model_dir: Path, init: Init, labels: LabelSet, pad_token_id: int | None, seed: int
) -> Any:
    """The checkpoint's architecture with a sequence classification head, pretrained or random."""
    from transformers import AutoModelForSequenceClassification

    config = classifier_config(model_dir, labels, pad_token_id)
    return instantiate(AutoModelForSequenceClassification, model_dir, config, init, seed)


def probe_head(model: Any, model_dir: Path, strategy: str) -> set[str] | None:
    """For a linear probe, the names of the weights the head adds to the checkpoint (what it
    trains); None for fine-tuning. Read before any resize changes the model's config."""
    if strategy != "linear_probe":
        return None
    from transformers import AutoModelForSequenceClassification

    return new_parameter_names(AutoModelForSequenceClassification, model_dir, model.config)


def apply_strategy(model: Any, head: set[str] | None) -> int:
    """Freeze everything but `head` (a probe; None: train every weight); the trainable count."""
    if head is not None:
        return freeze_all_but(model, head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def evaluate_logits(
    logits_of: Callable[[list[int]], torch.Tensor], dev: list[Example], batch_size: int, num_classes: int
) -> dict[str, Any]:
    """Dev metrics from class logits per batch of dev indices."""
    predictions, loss_sum = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(dev), batch_size):
            chosen = list(range(start, min(start + batch_size, len(dev))))
            logits = logits_of(chosen).float()
            gold = torch.tensor([dev[i].label for i in chosen])
            loss_sum += float(F.cross_entropy(logits, gold, reduction="sum"))
            predictions += logits.argmax(-1).tolist()
    gold_labels = [example.label for example in dev]
    return {
        **prefixed(classification_metrics(predictions, gold_labels, num_classes)),
        "dev_loss": loss_sum / len(dev),
    }


class LinearProbe(torch.nn.Module):
    """A frozen pre-trained (or random) body and one trainable linear layer on its pooled features:
    the linear probe. The body stays in eval mode (no dropout) and runs without gradients."""

    def __init__(
        self, body: Any, num_classes: int, pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ):
        super().__init__()
        self.body, self.pool = body, pool
        self.body.requires_grad_(False)
        self.head = torch.nn.Linear(
            body.config.hidden_size if hasattr(body.config, "hidden_size") else body.config.d_model,
            num_classes,
        )

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.body.eval()
        return self

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            states = self.body(**inputs).last_hidden_state
        return self.head(self.pool(states, inputs["attention_mask"]))

    def save_pretrained(self, directory: Path) -> None:
        """The head only (the body is the pre-trained model, or its seeded random init)."""
        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(
            {name: tensor.contiguous() for name, tensor in self.head.state_dict().items()},
            str(Path(directory) / "probe_head.safetensors"),
        )


def first_token(states: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
    """The [CLS] state (BERT's sentence representation, before its pooler)."""
    return states[:, 0]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' states (T5's encoder has no [CLS])."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


def build_linear_probe(
    auto_class: Any, model_dir: Path, init: Init, num_classes: int, seed: int, pool: Any
) -> tuple[LinearProbe, int]:
    """The body (`auto_class`, pretrained or random), frozen, and a seeded linear head."""
    from transformers import AutoConfig

    body = instantiate(auto_class, model_dir, AutoConfig.from_pretrained(model_dir), init, seed)
    torch.manual_seed(seed)
    probe = LinearProbe(body, num_classes, pool)
    return probe, sum(p.numel() for p in probe.head.parameters())


def encoder_head(
    config: ClassificationConfig,
    model_dir: Path,
    init: Init,
    data: TaskData,
    train_rows: list[Example],
    cell: Cell,
    seed: int,
) -> Head:
    """BERT: `[CLS] A [SEP] (B [SEP])`, token types 0/1, the classifier on the pooled [CLS]
    (fine-tuning), or one linear layer on the frozen [CLS] state (linear probe). `symmetric` pairs
    are scored in both orders, logits summed."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(model_dir)
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise ArtifactError(f"{model_dir}: a masked-LM classifier needs [CLS], [SEP] and [PAD] tokens")
    model: Any
    if cell.strategy == "linear_probe":
        model, trainable = build_linear_probe(
            AutoModel, model_dir, init, len(data.labels.names), seed, first_token
        )
        positions = max_positions(model.body.config)
    else:
        model = build_sequence_classifier(model_dir, init, data.labels, pad_id, seed)
        trainable = apply_strategy(model, None)
        positions = max_positions(model.config)
    max_length = min(config.max_length, positions)

    def encode(rows: list[Example], swap: bool = False) -> list[tuple[list[int], list[int]]]:
        firsts = token_ids(tokenizer, [row.text for row in rows])
        seconds = token_ids(tokenizer, [row.text_pair or "" for row in rows])
        encoded = []
        for row, a, b in zip(rows, firsts, seconds, strict=True):
            has_pair = row.text_pair is not None
            if has_pair and swap:
                a, b = b, a
            a, b2 = truncate_pair(a, b if has_pair else None, max_length - (3 if has_pair else 2))
            ids = [cls_id, *a, sep_id] + ([*b2, sep_id] if b2 is not None else [])
            types = [0] * (len(a) + 2) + ([1] * (len(b2) + 1) if b2 is not None else [])
            encoded.append((ids, types))
        return encoded

    orders = [False, True] if config.symmetric else [False]
    train_ids = [encode(train_rows, swap) for swap in orders]
    dev_ids = [encode(data.dev, swap) for swap in orders]

    def forward(items: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        input_ids, attention_mask = pad_right([ids for ids, _ in items], pad_id)
        token_types, _ = pad_right([types for _, types in items], 0)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_types}
        output = model(**inputs)
        return output if isinstance(output, torch.Tensor) else output.logits

    def summed(ids_by_order: list[list[tuple[list[int], list[int]]]], chosen: list[int]) -> torch.Tensor:
        return torch.stack([forward([ids[i] for i in chosen]) for ids in ids_by_order]).sum(0)

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        logits = summed(train_ids, chosen)
        return F.cross_entropy(logits, torch.tensor([train_rows[i].label for i in chosen]))

    def evaluate() -> dict[str, Any]:
        return evaluate_logits(
            lambda chosen: summed(dev_ids, chosen), data.dev, config.batch_size, len(data.labels.names)
        )

    form = "[CLS] A [SEP] B [SEP]" if config.columns.text_pair is not None else "[CLS] A [SEP]"
    if config.symmetric:
        form += " (both orders, logits summed)"
    if cell.strategy == "linear_probe":
        form += "; linear probe on the frozen [CLS] state"
    return Head(model, tokenizer, batch_loss, evaluate, form, {"trainable_parameters": trainable})


def add_transform_tokens(tokenizer: Any, model: Any) -> dict[str, int]:
    """GPT-1's start/delimiter/extract tokens: added to the tokenizer, with their embedding rows set
    to the mean embedding of the tokenizer's own rows (deterministic; training moves them apart).

    A table wider than the tokenizer (`pretrain.vocab_multiple_of` padding) lends them its padding
    rows, which no token id of this tokenizer reads; the table grows only when they do not fit.
    """
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [START, DELIM, EXTRACT]})
    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in (START, DELIM, EXTRACT)}
    first_new, rows = min(ids.values()), model.get_input_embeddings().weight.shape[0]
    if first_new < before:  # the tokenizer had them: their rows are trained, not new
        raise ArtifactError(
            f"the tokenizer already has transform token id {first_new} (of {before} tokens): "
            "cannot give the transform tokens new embeddings"
        )
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[first_new : len(tokenizer)] = embeddings[:first_new].mean(0)
    return ids


def causal_head(
    config: ClassificationConfig,
    model_dir: Path,
    init: Init,
    data: TaskData,
    train_rows: list[Example],
    cell: Cell,
    seed: int,
) -> Head:
    """GPT-1: transformed inputs, a linear head on the last token's state, auxiliary LM loss."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ArtifactError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # the usual GPT-2 choice; padding is masked anyway
    pad_id = tokenizer.pad_token_id
    model = build_sequence_classifier(model_dir, init, data.labels, pad_id, seed)
    head = probe_head(model, model_dir, cell.strategy)
    special = add_transform_tokens(tokenizer, model)
    # After the transform rows are set: a probe keeps them at their (mean) init with the rest of the table.
    trainable = apply_strategy(model, head)
    body, score = model.base_model, getattr(model, "score", None)
    if score is None:
        raise ArtifactError(f"{type(model).__name__}: GPT-1 style classification expects a `score` head")
    aux_weight = config.aux_lm_weight if cell.strategy == "finetune" else 0.0
    max_length = min(config.max_length, max_positions(model.config))
    added = torch.tensor(sorted(special.values()))

    def encode(rows: list[Example], swap: bool = False) -> list[list[int]]:
        firsts = token_ids(tokenizer, [row.text for row in rows])
        seconds = token_ids(tokenizer, [row.text_pair or "" for row in rows])
        encoded = []
        for row, a, b in zip(rows, firsts, seconds, strict=True):
            if row.text_pair is None:
                a, _ = truncate_pair(a, None, max_length - 2)
                encoded.append([special[START], *a, special[EXTRACT]])
                continue
            if swap:
                a, b = b, a
            a, b2 = truncate_pair(a, b, max_length - 3)
            encoded.append([special[START], *a, special[DELIM], *(b2 or []), special[EXTRACT]])
        return encoded

    orders = [False, True] if config.symmetric else [False]
    train_ids = [encode(train_rows, swap) for swap in orders]
    dev_ids = [encode(data.dev, swap) for swap in orders]

    def forward(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits from the last real token's state, the auxiliary LM loss)."""
        input_ids, attention_mask = pad_right(sequences, pad_id)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1
        logits = score(hidden[torch.arange(len(sequences)), last])
        if aux_weight == 0.0 or not model.training:
            return logits, torch.zeros(())
        # LM loss on the task text: each real token predicts the next; the transform tokens are not
        # language, so they are never targets. The LM head is the tied input embedding (GPT-1/2).
        lm_logits = hidden[:, :-1] @ model.get_input_embeddings().weight.T
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
        targets = targets.masked_fill(torch.isin(targets, added), IGNORE_INDEX)
        return logits, F.cross_entropy(lm_logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def summed(ids_by_order: list[list[list[int]]], chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        results = [forward([ids[i] for i in chosen]) for ids in ids_by_order]
        logits = torch.stack([r[0] for r in results]).sum(0)  # similarity: both orders summed
        return logits, torch.stack([r[1] for r in results]).mean()

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        logits, lm_loss = summed(train_ids, chosen)
        task_loss = F.cross_entropy(logits, torch.tensor([train_rows[i].label for i in chosen]))
        return task_loss + aux_weight * lm_loss if aux_weight else task_loss

    def evaluate() -> dict[str, Any]:
        return evaluate_logits(
            lambda chosen: summed(dev_ids, chosen)[0], data.dev, config.batch_size, len(data.labels.names)
        )

    form = (
        f"{START} A {DELIM} B {EXTRACT}" if config.columns.text_pair is not None else f"{START} A {EXTRACT}"
    )
    if config.symmetric:
        form += " (both orders, logits summed)"
    return Head(
        model,
        tokenizer,
        batch_loss,
        evaluate,
        form,
        {"trainable_parameters": trainable, "aux_lm_weight": aux_weight, "transform_token_ids": special},
    )


def t5_input_texts(config: ClassificationConfig, rows: list[Example]) -> list[str]:
    return [
        config.text_to_text_template.format(task=config.id, text=row.text)
        if row.text_pair is None
        else config.text_to_text_pair_template.format(task=config.id, text=row.text, text_pair=row.text_pair)
        for row in rows
    ]


def t5_inputs(tokenizer: Any, config: ClassificationConfig, rows: list[Example]) -> list[list[int]]:
    """Encoder ids of the templated text, cut to max_length, each ending in </s>."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ArtifactError("text-to-text classification needs a tokenizer with an eos token")
    ids = tokenizer(t5_input_texts(config, rows), truncation=True, max_length=config.max_length)["input_ids"]
    return [with_eos(row[: config.max_length - 1] if row[-1:] != [eos_id] else row, eos_id) for row in ids]


def label_words(config: ClassificationConfig, labels: LabelSet) -> list[str]:
    words = config.label_words or {}
    unknown = sorted(set(words) - set(labels.names))
    if unknown:
        raise DataError(f"label_words name labels not in the label set {labels.names}: {unknown}")
    return [words.get(name, name) for name in labels.names]


def seq2seq_head(
    config: ClassificationConfig,
    model_dir: Path,
    init: Init,
    data: TaskData,
    train_rows: list[Example],
    cell: Cell,
    seed: int,
) -> Head:
    """T5: fine-tune text to text (target: the label's word); a linear probe trains T5's
    classification head on the decoder's EOS state with the body frozen."""
    tokenizer = load_tokenizer(model_dir)
    pad_id = tokenizer.pad_token_id
    train_inputs, dev_inputs = (
        t5_inputs(tokenizer, config, train_rows),
        t5_inputs(tokenizer, config, data.dev),
    )
    num_classes = len(data.labels.names)
    if cell.strategy == "linear_probe":
        from transformers import T5EncoderModel

        probe, trainable = build_linear_probe(T5EncoderModel, model_dir, init, num_classes, seed, masked_mean)

        def logits_of(inputs: list[list[int]]) -> torch.Tensor:
            input_ids, attention_mask = pad_right(inputs, pad_id)
            return probe(input_ids=input_ids, attention_mask=attention_mask)

        def probe_loss(chosen: list[int]) -> torch.Tensor:
            logits = logits_of([train_inputs[i] for i in chosen])
            return F.cross_entropy(logits, torch.tensor([train_rows[i].label for i in chosen]))

        def probe_evaluate() -> dict[str, Any]:
            return evaluate_logits(
                lambda chosen: logits_of([dev_inputs[i] for i in chosen]),
                data.dev,
                config.batch_size,
                num_classes,
            )

        return Head(
            probe,
            tokenizer,
            probe_loss,
            probe_evaluate,
            f"{config.text_to_text_template} </s>; linear probe on the frozen encoder's mean state",
            {"trainable_parameters": trainable},
        )

    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    model = instantiate(AutoModelForSeq2SeqLM, model_dir, AutoConfig.from_pretrained(model_dir), init, seed)
    words = label_words(config, data.labels)
    targets = [with_eos(ids, tokenizer.eos_token_id) for ids in tokenizer(words)["input_ids"]]

    def batch(inputs: list[list[int]], labels: list[int]) -> Batch:
        input_ids, attention_mask = pad_right(inputs, pad_id)
        target_ids, target_mask = pad_right([targets[label] for label in labels], pad_id)
        target_ids[target_mask == 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": target_ids}

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        return model(**batch([train_inputs[i] for i in chosen], [train_rows[i].label for i in chosen])).loss

    def evaluate() -> dict[str, Any]:
        predictions, loss_sum, num_tokens = [], 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(data.dev), config.batch_size):
                chosen = list(range(start, min(start + config.batch_size, len(data.dev))))
                inputs = batch([dev_inputs[i] for i in chosen], [data.dev[i].label for i in chosen])
                logits = model(**inputs).logits.float()
                loss_sum += float(
                    F.cross_entropy(
                        logits.flatten(0, 1),
                        inputs["labels"].flatten(),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
                num_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
                generated = model.generate(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    max_new_tokens=max(len(ids) for ids in targets),
                    do_sample=False,
                    num_beams=1,
                    suppress_tokens=spare_token_ids(model, tokenizer),
                )
                texts = [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
                predictions += [words.index(text) if text in words else -1 for text in texts]
        gold = [example.label for example in data.dev]
        return {
            **prefixed(classification_metrics(predictions, gold, num_classes)),
            "dev_loss": loss_sum / num_tokens,  # per target token, </s> included (what training minimises)
            # Neither label word: the model has not (yet) learnt the output format.
            "dev_invalid_fraction": predictions.count(-1) / len(predictions),
        }

    return Head(
        model,
        tokenizer,
        batch_loss,
        evaluate,
        f"{config.text_to_text_template} -> label word",
        {"trainable_parameters": sum(p.numel() for p in model.parameters()), "label_words": words},
    )


HEADS = {"encoder": encoder_head, "causal": causal_head, "seq2seq": seq2seq_head}


# ---------------------------------------------------------------------------------------------
# The runner


def run_classification(
    config: ClassificationConfig,
    cell: Cell,
    model_dir: Path,
    init: Init,
    data_dir: Path | None,
    output_dir: Path,
    seed: int,
    progress: ProgressTarget | None = None,
) -> dict[str, Any]:
    """Train one cell (strategy, train size, seed) from one init; score the dev set after each
    epoch. `seed` is the cell's seed (the run's seed plus the seed index)."""
    began = time.perf_counter()
    key = f"finetune.tasks[{config.id}]"
    data = load_task_data(config, data_dir, key)
    train_rows = subset(data.train, cell.train_size, seed)
    family = model_family(model_dir)
    head = HEADS[family](config, model_dir, init, data, train_rows, cell, seed)
    result = fit_cell(
        config, cell, init, seed, head.model, head.batch_loss, len(train_rows), head.evaluate, progress
    )
    counts = [sum(row.label == label for row in train_rows) for label in range(len(data.labels.names))]
    dev_counts = [sum(row.label == label for row in data.dev) for label in range(len(data.labels.names))]
    meta = dict(head.meta)
    metrics: dict[str, Any] = {
        **cell_metrics(
            config,
            cell,
            init,
            seed,
            result,
            family=family,
            input_format=head.input_format,
            train_size=len(train_rows),
            dev_size=len(data.dev),
            dev_source=data.dev_source,
            skipped=data.skipped,
            model=head.model,
            trainable_parameters=meta.pop("trainable_parameters"),
        ),
        **meta,
        "labels": data.labels.names,
        "dev_majority_baseline_accuracy": max(dev_counts) / len(data.dev),
        "train_label_counts": dict(zip(data.labels.names, counts, strict=True)),
        # Classes the training subset never shows: reported, not an error (small subsets, rare labels).
        "classes_without_train_examples": [
            n for n, c in zip(data.labels.names, counts, strict=True) if c == 0
        ],
    }
    if metrics["classes_without_train_examples"]:
        log.warning(
            "%s %s: no training example of class(es) %s",
            config.id,
            cell.label,
            metrics["classes_without_train_examples"],
        )
    if config.save_model:
        head.model.save_pretrained(output_dir / "model")
        head.tokenizer.save_pretrained(output_dir / "model")
        write_json(
            output_dir / "model" / TASK_META_FILE,
            {
                "task": config.id,
                "labels": data.labels.names,
                "input_format": head.input_format,
                "family": family,
            },
        )
    return write_cell(output_dir, metrics, result, began)
