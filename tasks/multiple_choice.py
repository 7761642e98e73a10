"""Multiple choice: a context (question, goal, premise) and N options, one of them correct.

Each (context, option) pair is one sequence that the model turns into one scalar score; a softmax
over the N scores is trained with cross-entropy on the correct option. Scores per paradigm:

- masked LMs (BERT): `[CLS] context [SEP] option [SEP]` with token types 0/1, the pooled [CLS]
  through `Linear(hidden, 1)`: `AutoModelForMultipleChoice` (BERT paper, SWAG);
- causal LMs (GPT-1, Radford et al. 2018, section 3.3): `<|start|> context <|delim|> option
  <|extract|>` per option, a linear head (no bias) on the `<|extract|>` state, plus
  `aux_lm_weight` x the LM loss on every option's sequence (GPT-1's code does the same for
  ROCStories: the LM loss runs over all the task's input sequences);
- encoder-decoders (T5): the context is the encoder's input and each option the decoder's target;
  its score is the option's summed log-probability (the text-to-text likelihood), trained with
  cross-entropy over the options' scores.

`linear_probe` freezes the whole body (pretrained or random) and trains exactly one new
`Linear(hidden, 1)` (no bias: a softmax over options ignores a shared offset) on features computed
once, in eval mode, without gradients: the [CLS] state (BERT, before its pooler, which an MLM
checkpoint lacks), the `<|extract|>` state (GPT) or the mean of T5's encoder states over
`context option </s>`. Every row of a task has the same number of options.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ArtifactError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.progress import ProgressTarget
from lmforge.tasks.classification import (
    DELIM,
    EXTRACT,
    START,
    add_transform_tokens,
    model_family,
    token_ids,
    truncate_pair,
)
from lmforge.tasks.config import Cell, MultipleChoiceConfig
from lmforge.tasks.finetune import (
    IGNORE_INDEX,
    Init,
    cell_metrics,
    fit_cell,
    instantiate,
    pad_right,
    seeded_order,
    with_eos,
    write_cell,
)
from lmforge.tasks.modeling import load_tokenizer, max_positions, write_json
from lmforge.tasks.readers import (
    Table,
    attach_labels,
    carve_split,
    column_name,
    read_label_file,
    read_table,
)

log = get_logger(__name__)
TASK_META_FILE = "lmforge_task.json"
PROBE_HEAD_FILE = "probe_head.safetensors"
LABEL_COLUMN = "__label__"  # the column a separate label file's values are read into
INTEGER = re.compile(r"[+-]?\d+")
# Encoded questions -> ((b, N) option scores, the weighted auxiliary loss or 0).
Scorer = Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Question:
    context: str
    options: tuple[str, ...]
    label: int  # the correct option's 0-based index


@dataclass
class ChoiceData:
    """A task's questions, its number of options, and what was left out of each split and why."""

    train: list[Question]
    dev: list[Question]
    num_options: int
    dev_source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Data


def text_of(value: Any) -> str:
    return "" if value is None else str(value).strip()


def read_split(
    config: MultipleChoiceConfig,
    path: str,
    labels_path: str | None,
    data_dir: Path | None,
    key: str,
    split: str,
) -> tuple[Table, str, Callable[[int], str]]:
    """The split's table (named by its configured path: notes about its rows go into metrics.json),
    its label column, and where row i's label was read (a separate label file's line, or the row)."""
    side = "train" if split == "train" else "dev"
    table = read_table(
        path, data_dir, f"{key}.{side}_path", format=config.format, header=config.header, split=split
    )
    resolved = table.source
    table = dataclasses.replace(
        table, source=path, skipped=[note.replace(resolved, path, 1) for note in table.skipped]
    )
    if labels_path is None:
        return table, column_name(table, config.columns["label"], f"{key}.columns.label"), table.where
    labels_key = f"{key}.{side}_labels_path"
    labels = read_label_file(labels_path, data_dir, labels_key)
    table = attach_labels(table, labels, LABEL_COLUMN, labels_key, labels_path)
    return table, LABEL_COLUMN, lambda index: f"{labels_path}:{index + 1}"


def options_reader(config: MultipleChoiceConfig, table: Table, key: str) -> Callable[[int], list[Any]]:
    """Row i's options: one per configured column, or the list one column holds (a JSON list in a
    csv/tsv cell is read as one)."""
    spec = config.columns["options"]
    if isinstance(spec, list):
        names = [column_name(table, one, f"{key}.columns.options") for one in spec]
        return lambda index: [table.rows[index][name] for name in names]
    name = column_name(table, spec, f"{key}.columns.options")

    def listed(index: int) -> list[Any]:
        value = table.rows[index][name]
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise DataError(
                f"{key}: {table.where(index)}: column {name!r} should hold a list of options, found "
                f"{type(value).__name__} {str(value)[:60]!r}; or list one column per option in columns.options"
            )
        return list(value)

    return listed


def option_index(value: Any, offset: int, num_options: int, where: str, key: str) -> int:
    """The 0-based index of the correct option: the label value less `offset`, in 0..N-1."""
    number = int(value) if isinstance(value, float) and value.is_integer() else None
    text = text_of(value)
    if number is None and not isinstance(value, bool) and INTEGER.fullmatch(text):
        number = int(text)
    if number is None or not 0 <= number - offset < num_options:
        shift = f" after subtracting label_offset {offset}" if offset else ""
        raise DataError(
            f"{key}: label {value!r} at {where} is not an option index 0-{num_options - 1}{shift} "
            f"({num_options} options; label_offset: 1 reads 1-based answer numbers)"
        )
    return number - offset


def questions_of(
    config: MultipleChoiceConfig,
    table: Table,
    label_column: str,
    label_where: Callable[[int], str],
    key: str,
    expected: tuple[int, str] | None,
) -> tuple[list[Question], list[str], tuple[int, str] | None]:
    """Rows as questions; a row with an empty context or option, or no label, is left out and noted.
    `expected` is (number of options, the row that set it): every row must have that many."""
    context_column = column_name(table, config.columns["context"], f"{key}.columns.context")
    options_of = options_reader(config, table, key)
    questions, skipped = [], []
    for index, row in enumerate(table.rows):
        where = table.where(index)
        context, options = text_of(row.get(context_column)), [text_of(o) for o in options_of(index)]
        empty = [str(k) for k, option in enumerate(options) if not option]
        if not context or not options or empty:
            reason = "empty context" if not context else f"empty option {', '.join(empty) or '(none given)'}"
            skipped.append(f"{where}: {reason}")
            continue
        if expected is None:
            if len(options) < 2:
                raise DataError(f"{key}: {where} has {len(options)} option; multiple choice needs at least 2")
            expected = (len(options), where)
        if len(options) != expected[0]:
            raise DataError(
                f"{key}: {where} has {len(options)} options but {expected[1]} has {expected[0]}; every "
                "row of a multiple-choice task needs the same number of options"
            )
        if text_of(row.get(label_column)) == "":
            skipped.append(f"{label_where(index)}: no label")
            continue
        label = option_index(row[label_column], config.label_offset, expected[0], label_where(index), key)
        questions.append(Question(context, tuple(options), label))
    return questions, skipped, expected


def load_choice_data(config: MultipleChoiceConfig, data_dir: Path | None, key: str) -> ChoiceData:
    """Train and dev questions; without dev_path the dev set is a seeded share of train."""
    table, label_column, where = read_split(
        config, config.train_path, config.train_labels_path, data_dir, key, "train"
    )
    train_questions, train_skipped, expected = questions_of(config, table, label_column, where, key, None)
    skipped = {"train": table.skipped + train_skipped}
    if config.dev_path is None:
        train_index, dev_index = carve_split(len(train_questions), config.dev_fraction, config.split_seed)
        dev_questions = [train_questions[i] for i in dev_index]
        train_questions = [train_questions[i] for i in train_index]
        dev_source = (
            f"{config.train_path} (a seeded {config.dev_fraction:g} of it, split_seed {config.split_seed})"
        )
    else:
        table, label_column, where = read_split(
            config, config.dev_path, config.dev_labels_path, data_dir, key, "validation"
        )
        dev_questions, dev_skipped, _ = questions_of(config, table, label_column, where, key, expected)
        skipped["dev"] = table.skipped + dev_skipped
        dev_source = config.dev_path
    for split, notes in skipped.items():
        if notes:
            log.warning("%s: %d %s row(s) left out, e.g. %s", key, len(notes), split, notes[0])
    for split, questions in (("train", train_questions), ("dev", dev_questions)):
        if not questions or expected is None:
            reasons = "; ".join(skipped.get(split, [])[:3])
            raise DataError(f"{key}: no usable {split} question" + (f" ({reasons})" if reasons else ""))
    if config.max_dev_examples is not None and len(dev_questions) > config.max_dev_examples:
        chosen = sorted(seeded_order(len(dev_questions), config.split_seed)[: config.max_dev_examples])
        dev_questions = [dev_questions[i] for i in chosen]
    assert expected is not None
    return ChoiceData(train_questions, dev_questions, expected[0], dev_source, skipped)


def choice_metrics(scores: torch.Tensor, gold: list[int]) -> dict[str, float]:
    """Accuracy (the highest score is the gold option; ties go to the first) and the mean
    cross-entropy of the softmax over the options."""
    gold_tensor = torch.tensor(gold)
    correct = int((scores.argmax(-1) == gold_tensor).sum())
    loss = float(F.cross_entropy(scores.double(), gold_tensor))
    return {"dev_accuracy": correct / len(gold), "dev_loss": loss}


# ---------------------------------------------------------------------------------------------
# Heads per paradigm: each encodes questions (one sequence per option) and scores them.


@dataclass
class Head:
    model: Any  # every parameter, trained or frozen: what `train` optimises and the count reports
    tokenizer: Any
    encode: Callable[[list[Question]], list[Any]]
    scores: Scorer
    input_format: str
    trainable_parameters: int
    save: Callable[[Path], None]
    meta: dict[str, Any] = field(default_factory=dict)


def tokenized(tokenizer: Any, questions: list[Question]) -> list[tuple[list[int], list[list[int]]]]:
    """(context ids, [option ids, ...]) per question, without special tokens."""
    contexts = token_ids(tokenizer, [q.context for q in questions])
    options = iter(token_ids(tokenizer, [option for q in questions for option in q.options]))
    return [(c, [next(options) for _ in q.options]) for q, c in zip(questions, contexts, strict=True)]


def no_loss() -> torch.Tensor:
    return torch.zeros(())


class LinearProbe(torch.nn.Module):
    """A frozen body and one new `Linear(hidden, 1)`: the only trained weights."""

    def __init__(self, body: Any, seed: int):
        super().__init__()
        body.requires_grad_(False)
        self.body = body
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(body.config.hidden_size, 1, bias=False)


def probe_head(
    body: Any,
    tokenizer: Any,
    encode: Callable[[list[Question]], list[Any]],
    features: Callable[[list[Any]], torch.Tensor],
    config: MultipleChoiceConfig,
    seed: int,
    input_format: str,
) -> Head:
    """A linear probe: `features` ((b, N, hidden) from the body) computed once per question in eval
    mode without gradients, and a seeded linear layer scoring each option."""
    model = LinearProbe(body, seed)

    def encode_features(questions: list[Question]) -> list[Any]:
        items, rows = encode(questions), []
        body.eval()
        with torch.no_grad():
            for start in range(0, len(items), config.batch_size):
                rows += list(features(items[start : start + config.batch_size]).float().unbind(0))
        return rows

    def scores(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return model.head(torch.stack(items)).squeeze(-1), no_loss()

    def save(directory: Path) -> None:
        from safetensors.torch import save_file

        body.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        save_file({"weight": model.head.weight.detach().contiguous()}, str(directory / PROBE_HEAD_FILE))

    trainable = sum(p.numel() for p in model.head.parameters())
    return Head(model, tokenizer, encode_features, scores, input_format, trainable, save)


def finetune_save(model: Any, tokenizer: Any) -> Callable[[Path], None]:
    def save(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return save


def encoder_head(config: MultipleChoiceConfig, model_dir: Path, init: Init, cell: Cell, seed: int) -> Head:
    """BERT: `[CLS] context [SEP] option [SEP]`, token types 0/1; AutoModelForMultipleChoice (pooled
    [CLS] -> Linear(hidden, 1)), or a probe on the frozen [CLS] state."""
    from transformers import AutoConfig, AutoModel, AutoModelForMultipleChoice

    tokenizer = load_tokenizer(model_dir)
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise ArtifactError(
            f"{model_dir}: a masked-LM multiple-choice head needs [CLS], [SEP] and [PAD] tokens"
        )
    model_config = AutoConfig.from_pretrained(model_dir)
    budget = min(config.max_length, max_positions(model_config)) - 3

    def encode(questions: list[Question]) -> list[Any]:
        items = []
        for context, options in tokenized(tokenizer, questions):
            item = []
            for option in options:
                a, b = truncate_pair(context, option, budget)
                b = b or []
                item.append(([cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)))
            items.append(item)
        return items

    def inputs(items: list[Any]) -> dict[str, torch.Tensor]:
        """The options' sequences flattened to (b * N, length)."""
        flat = [sequence for item in items for sequence in item]
        input_ids, attention_mask = pad_right([ids for ids, _ in flat], pad_id)
        token_types, _ = pad_right([types for _, types in flat], 0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_types}

    form = "[CLS] context [SEP] option [SEP]"
    if cell.strategy == "linear_probe":
        body = instantiate(AutoModel, model_dir, model_config, init, seed)

        def features(items: list[Any]) -> torch.Tensor:
            states = body(**inputs(items)).last_hidden_state[:, 0]
            return states.view(len(items), -1, states.shape[-1])

        return probe_head(
            body, tokenizer, encode, features, config, seed, f"{form}; probe on the [CLS] state"
        )
    model = instantiate(AutoModelForMultipleChoice, model_dir, model_config, init, seed)

    def scores(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {name: t.view(len(items), -1, t.shape[-1]) for name, t in inputs(items).items()}
        return model(**batch).logits, no_loss()

    trainable = sum(p.numel() for p in model.parameters())
    return Head(model, tokenizer, encode, scores, form, trainable, finetune_save(model, tokenizer))


def causal_head(config: MultipleChoiceConfig, model_dir: Path, init: Init, cell: Cell, seed: int) -> Head:
    """GPT-1: `<|start|> context <|delim|> option <|extract|>`, a linear head on the extract state,
    `aux_lm_weight` x the LM loss on every option's sequence (fine-tuning only)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ArtifactError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked; the extract state is the last real one
    pad_id = tokenizer.pad_token_id
    probe = cell.strategy == "linear_probe"
    if probe:
        model = body = instantiate(AutoModel, model_dir, AutoConfig.from_pretrained(model_dir), init, seed)
    else:
        model_config = AutoConfig.from_pretrained(model_dir, num_labels=1, pad_token_id=pad_id)
        model = instantiate(AutoModelForSequenceClassification, model_dir, model_config, init, seed)
        body = model.base_model
    special = add_transform_tokens(tokenizer, model)
    added = torch.tensor(sorted(special.values()))
    budget = min(config.max_length, max_positions(body.config)) - 3

    def encode(questions: list[Question]) -> list[Any]:
        items = []
        for context, options in tokenized(tokenizer, questions):
            item = []
            for option in options:
                a, b = truncate_pair(context, option, budget)
                item.append([special[START], *a, special[DELIM], *(b or []), special[EXTRACT]])
            items.append(item)
        return items

    def states(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the extract states, all states, ids, mask) of the options' sequences, flattened."""
        input_ids, attention_mask = pad_right([sequence for item in items for sequence in item], pad_id)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(len(hidden)), last], hidden, input_ids, attention_mask

    form = f"{START} context {DELIM} option {EXTRACT}"
    if probe:

        def features(items: list[Any]) -> torch.Tensor:
            extract = states(items)[0]
            return extract.view(len(items), -1, extract.shape[-1])

        return probe_head(
            body, tokenizer, encode, features, config, seed, f"{form}; probe on the extract state"
        )
    score, aux_weight = getattr(model, "score", None), config.aux_lm_weight
    if score is None:
        raise ArtifactError(f"{type(model).__name__}: GPT-1 style multiple choice expects a `score` head")

    def scores(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        extract, hidden, input_ids, attention_mask = states(items)
        logits = score(extract).view(len(items), -1)
        if aux_weight == 0.0 or not model.training:
            return logits, no_loss()
        # LM loss on every option's sequence (GPT-1's ROCStories code); the transform tokens are not
        # language, so never targets. The LM head is the tied input embedding (GPT-1/2).
        lm_logits = hidden[:, :-1] @ model.get_input_embeddings().weight.T
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
        targets = targets.masked_fill(torch.isin(targets, added), IGNORE_INDEX)
        lm_loss = F.cross_entropy(lm_logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, aux_weight * lm_loss

    trainable = sum(p.numel() for p in model.parameters())
    head = Head(model, tokenizer, encode, scores, form, trainable, finetune_save(model, tokenizer))
    head.meta = {"aux_lm_weight": aux_weight}
    return head


def seq2seq_head(config: MultipleChoiceConfig, model_dir: Path, init: Init, cell: Cell, seed: int) -> Head:
    """T5: the context `</s>` into the encoder, each option `</s>` as the decoder's target, scored by
    its summed log-probability; a probe on the mean encoder state of `context option </s>`."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForTextEncoding
    from transformers.modeling_outputs import BaseModelOutput

    tokenizer = load_tokenizer(model_dir)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad_id is None or eos_id is None:
        raise ArtifactError(f"{model_dir}: T5 multiple choice needs a tokenizer with pad and eos tokens")
    model_config, length = AutoConfig.from_pretrained(model_dir), config.max_length
    if cell.strategy == "linear_probe":
        body = instantiate(AutoModelForTextEncoding, model_dir, model_config, init, seed)

        def joined(questions: list[Question]) -> list[Any]:
            items = []
            for context, options in tokenized(tokenizer, questions):
                pairs = [truncate_pair(context, option, length - 1) for option in options]
                items.append([[*a, *(b or []), eos_id] for a, b in pairs])
            return items

        def features(items: list[Any]) -> torch.Tensor:
            input_ids, attention_mask = pad_right([sequence for item in items for sequence in item], pad_id)
            hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            return pooled.view(len(items), -1, pooled.shape[-1])

        form = "context option </s>; probe on the mean encoder state"
        return probe_head(body, tokenizer, joined, features, config, seed, form)
    model = instantiate(AutoModelForSeq2SeqLM, model_dir, model_config, init, seed)

    def encode(questions: list[Question]) -> list[Any]:
        return [
            (with_eos(context[: length - 1], eos_id), [with_eos(o[: length - 1], eos_id) for o in options])
            for context, options in tokenized(tokenizer, questions)
        ]

    def scores(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        num_options = len(items[0][1])
        input_ids, attention_mask = pad_right([context for context, _ in items], pad_id)
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets, target_mask = pad_right([option for _, options in items for option in options], pad_id)
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.repeat_interleave(num_options, 0)),
            attention_mask=attention_mask.repeat_interleave(num_options, 0),
            labels=targets.masked_fill(target_mask == 0, IGNORE_INDEX),
        ).logits
        token_logp = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_logp * target_mask).sum(1).view(len(items), num_options), no_loss()

    trainable = sum(p.numel() for p in model.parameters())
    form = "context </s> -> option </s> (summed log-probability)"
    return Head(model, tokenizer, encode, scores, form, trainable, finetune_save(model, tokenizer))


HEADS = {"encoder": encoder_head, "causal": causal_head, "seq2seq": seq2seq_head}


# ---------------------------------------------------------------------------------------------
# The runner


def dev_scores(head: Head, items: list[Any], batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [
                head.scores(items[start : start + batch_size])[0].float()
                for start in range(0, len(items), batch_size)
            ]
        )


def run_multiple_choice(
    config: MultipleChoiceConfig,
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
    data = load_choice_data(config, data_dir, f"finetune.tasks[{config.id}]")
    order = seeded_order(len(data.train), seed)
    train_rows = [data.train[i] for i in order[: cell.train_size or len(data.train)]]
    family = model_family(model_dir)
    head = HEADS[family](config, model_dir, init, cell, seed)
    train_items, dev_items = head.encode(train_rows), head.encode(data.dev)
    train_gold = torch.tensor([q.label for q in train_rows])
    dev_gold = [q.label for q in data.dev]

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        scores, auxiliary = head.scores([train_items[i] for i in chosen])
        return F.cross_entropy(scores, train_gold[chosen]) + auxiliary

    def evaluate() -> dict[str, Any]:
        return choice_metrics(dev_scores(head, dev_items, config.batch_size), dev_gold)

    result = fit_cell(config, cell, init, seed, head.model, batch_loss, len(train_rows), evaluate, progress)
    positions = range(data.num_options)
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
            trainable_parameters=head.trainable_parameters,
        ),
        **head.meta,
        "num_options": data.num_options,
        "dev_chance_accuracy": 1 / data.num_options,
        # Always answering the dev set's most frequent position: a position bias would reach this.
        "dev_majority_baseline_accuracy": max(dev_gold.count(k) for k in positions) / len(dev_gold),
        "train_label_counts": [sum(q.label == k for q in train_rows) for k in positions],
    }
    if config.save_model:
        head.save(output_dir / "model")
        task_meta = {"task": config.id, "input_format": head.input_format, "family": family}
        write_json(output_dir / "model" / TASK_META_FILE, {**task_meta, "num_options": data.num_options})
    return write_cell(output_dir, metrics, result, began)
