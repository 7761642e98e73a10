"""Extractive question answering (SQuAD v1.1): the answer is a span of the context.

One cell of a task's grid (strategy, train size, seed) for one init. Every paradigm uses Hugging
Face's `AutoModelForQuestionAnswering`, one `nn.Linear(hidden, 2)` (`qa_outputs`) giving each token
a start and an end logit (BERT, Devlin et al. 2019, section 4.2):

- masked LMs (`BertForQuestionAnswering`): `[CLS] question [SEP] context [SEP]`, token types 0 then 1;
- causal LMs (`GPT2ForQuestionAnswering`): `<boundary> question <boundary> context`, the question
  first so every context state has read it; the boundary is the token the pre-training packing put
  between documents;
- encoder-decoders (`T5ForQuestionAnswering`): `question: ... context: ... </s>` (T5's SQuAD
  format); the logits come from the decoder's states over the shifted input, each cross-attending
  to the whole encoded input.

Long contexts are cut into windows of max_length tokens overlapping by doc_stride (the semantics of
Hugging Face's `run_qa.py`): only context tokens are candidate positions, and a window without the
answer points both positions at its first token. An answer is the best-scoring span (start <= end,
at most max_answer_length tokens, from the n-best starts and ends) over the question's windows,
mapped back to context characters through the tokenizer's offsets. Scored by the official SQuAD
v1.1 exact match and F1, as fractions (0..1) rather than the official script's percentages.

`linear_probe` runs the frozen body (in eval mode) under `torch.no_grad` and trains only
`qa_outputs`; `finetune` trains every weight.
"""

from __future__ import annotations

import gzip
import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.core.logs import get_logger
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.infra.progress import ProgressTarget
from lmforge.tasks.classification import TASK_META_FILE, model_family
from lmforge.tasks.config import Cell, ExtractiveQaConfig
from lmforge.tasks.finetune import (
    Init,
    cell_metrics,
    fit_cell,
    freeze_all_but,
    instantiate,
    pad_right,
    seeded_order,
    write_cell,
)
from lmforge.tasks.modeling import (
    boundary_token_id,
    load_tokenizer,
    max_positions,
    write_json,
)
from lmforge.tasks.readers import Table, carve_split, column_name, read_table

log = get_logger(__name__)
N_BEST = 20  # start and end candidates per window (run_qa.py's n_best_size)
# A training answer whose text is not at its answer_start is looked for this many characters around it.
MAX_ANSWER_SHIFT = 20
HEAD_PARAMETERS = {"qa_outputs.weight", "qa_outputs.bias"}
PREDICTIONS_FILE = "dev_predictions.json"
PUNCTUATION = frozenset(string.punctuation)
UNTITLED = "context: "  # the group of a question without an article title: its context


# ---------------------------------------------------------------------------------------------
# Official SQuAD v1.1 evaluation (evaluate-v1.1.py), as fractions


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Bag-of-tokens F1 between the normalized answers (0 when they share no token)."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    num_same = sum((Counter(predicted) & Counter(gold)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(predicted), num_same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[tuple[str, ...]]) -> dict[str, float]:
    """Exact match and F1, each the max over a question's reference answers, averaged over questions."""
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(max(exact_match_score(p, g) for g in refs) for p, refs in pairs) / len(pairs),
        "f1": sum(max(f1_score(p, g) for g in refs) for p, refs in pairs) / len(pairs),
    }


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Record:
    """One question as read, before any check: where it is, its fields, its (text, start) answers."""

    where: str
    id: str
    title: Any
    question: Any
    context: Any
    answers: list[tuple[Any, Any]]


@dataclass(frozen=True)
class QaExample:
    id: str
    group: str  # the article title (or, without one, the context): what a carved dev set keeps whole
    question: str
    context: str
    references: tuple[str, ...]  # every reference answer's text (what the metric compares with)
    # The first locatable answer's character span: the training target. -1 where no reference is
    # found in the context: such a question can be scored (by its references' texts, as the official
    # script does), never trained on.
    answer_start: int
    answer_end: int

    @property
    def located(self) -> bool:
        return self.answer_start >= 0


@dataclass
class QaData:
    train: list[QaExample]
    dev: list[QaExample]
    dev_source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)
    realigned: dict[str, int] = field(default_factory=dict)  # answers found a few characters away


def squad_records(document: Any, source: str) -> list[Record]:
    """The questions of a SQuAD JSON document, each named by its place in the file."""
    records = []
    for a, article in enumerate(document["data"]):
        article = article if isinstance(article, dict) else {}
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            paragraph = paragraph if isinstance(paragraph, dict) else {}
            for q, qa in enumerate(paragraph.get("qas") or []):
                qa = qa if isinstance(qa, dict) else {}
                where = f"{source} data[{a}].paragraphs[{p}].qas[{q}]"
                answers = [
                    (answer.get("text"), answer.get("answer_start"))
                    for answer in qa.get("answers") or []
                    if isinstance(answer, dict)
                ]
                records.append(
                    Record(
                        where,
                        str(qa.get("id") or where),
                        article.get("title"),
                        qa.get("question"),
                        paragraph.get("context"),
                        answers,
                    )
                )
    return records


def answer_pairs(value: Any) -> list[tuple[Any, Any]]:
    """(text, start) pairs from {"text": [...], "answer_start": [...]} or [{"text", "answer_start"}]."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if isinstance(texts, list | tuple) and isinstance(starts, list | tuple) and len(texts) == len(starts):
            return list(zip(texts, starts, strict=True))
        return [(texts, starts)] if isinstance(texts, str) else []
    if isinstance(value, list):
        return [(a.get("text"), a.get("answer_start")) for a in value if isinstance(a, dict)]
    return []


def table_records(config: ExtractiveQaConfig, table: Table, path: str, key: str) -> list[Record]:
    """The rows of a question/context/answers table; title and id columns are optional."""
    names: dict[str, str | None] = {}
    for role in ("question", "context", "answers", "title", "id"):
        spec = config.columns.get(role, role)
        optional = role in ("title", "id") and spec == role and spec not in table.columns
        names[role] = None if optional else column_name(table, spec, f"{key}.columns.{role}")

    def field_of(row: dict[str, Any], role: str) -> Any:
        name = names[role]
        return None if name is None else row.get(name)

    records = []
    for index, row in enumerate(table.rows):
        where = table.where(index).replace(table.source, path, 1)
        row_id = field_of(row, "id")
        records.append(
            Record(
                where,
                str(row_id) if row_id not in (None, "") else where,
                field_of(row, "title"),
                field_of(row, "question"),
                field_of(row, "context"),
                answer_pairs(field_of(row, "answers")),
            )
        )
    return records


def squad_document(file: Path) -> Any:
    """The parsed file when it is SQuAD JSON (an object with a "data" list), else None."""
    raw = file.read_bytes()
    try:
        document = json.loads(gzip.decompress(raw) if file.name.lower().endswith(".gz") else raw)
    except (ValueError, OSError, EOFError):
        return None
    return document if isinstance(document, dict) and isinstance(document.get("data"), list) else None


def read_records(
    config: ExtractiveQaConfig, path: str, data_dir: Path | None, key: str, split: str
) -> tuple[list[Record], list[str]]:
    """The split's questions and the records the reader could not use. Records are named by the
    config's path string, never the resolved file (metrics.json must not depend on the machine)."""
    if config.format == "squad" or (config.format == "auto" and not is_hf_uri(path)):
        file = resolve_file(path, data_dir, key)
        if config.format == "squad" or file.name.lower().removesuffix(".gz").endswith(".json"):
            document = squad_document(file)
            if document is not None:
                return squad_records(document, path), []
            if config.format == "squad":
                raise DataError(
                    f'{key}: {path} is not SQuAD JSON (expected an object with a "data" list of articles)'
                )
    table_format = config.format if config.format in ("jsonl", "parquet") else "auto"
    table = read_table(path, data_dir, key, format=table_format, split=split)
    notes = [note.replace(table.source, path, 1) for note in table.skipped]
    return table_records(config, table, path, key), notes


def locate(context: str, text: str, start: int) -> int | None:
    """Where `text` is in `context`: at `start`, else its nearest occurrence within MAX_ANSWER_SHIFT
    characters of it (annotations a few characters off), else None."""
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    lo = max(0, start - MAX_ANSWER_SHIFT)
    found = [
        match.start()
        for match in re.finditer(f"(?={re.escape(text)})", context[lo : start + len(text) + MAX_ANSWER_SHIFT])
    ]
    return lo + min(found, key=lambda at: abs(lo + at - start)) if found else None


def example_of(record: Record) -> tuple[QaExample | str, bool]:
    """(the checked example, or why it is left out; whether its answer was found off its start).
    An example none of whose answers is found has no span (`located` false)."""
    named = f"{record.where} (id {record.id})"
    question = record.question.strip() if isinstance(record.question, str) else ""
    context = record.context if isinstance(record.context, str) else ""
    if not question or not context.strip():
        return f"{named}: empty {'question' if not question else 'context'}", False
    references = tuple(t for t, _ in record.answers if isinstance(t, str) and t.strip())
    if not references:
        return f"{named}: no answer text", False
    group = str(record.title) if record.title not in (None, "") else f"{UNTITLED}{context}"
    for text, start in record.answers:
        if not isinstance(text, str) or not text.strip() or not isinstance(start, int | float):
            continue
        found = locate(context, text, int(start))
        if found is not None:
            example = QaExample(record.id, group, question, context, references, found, found + len(text))
            return example, found != int(start)
    return QaExample(record.id, group, question, context, references, -1, -1), False


def unlocated_note(record: Record) -> str:
    text, start = record.answers[0]
    return (
        f"{record.where} (id {record.id}): answer {text!r} not found at answer_start {start!r} "
        "nor near it (no training target)"
    )


def without_unlocated(examples: list[QaExample], notes: dict[str, str]) -> tuple[list[QaExample], list[str]]:
    """(the examples that have a training span, the notes of those that do not)."""
    return [e for e in examples if e.located], [notes[e.id] for e in examples if not e.located]


def examples_from(records: list[Record]) -> tuple[list[QaExample], list[str], int, dict[str, str]]:
    """(examples, why records were left out, answers realigned, a note per unlocated example)."""
    examples, skipped, realigned, unlocated = [], [], 0, {}
    for record in records:
        example, shifted = example_of(record)
        if isinstance(example, str):
            skipped.append(example)
        else:
            examples.append(example)
            realigned += shifted
            if not example.located:
                unlocated[example.id] = unlocated_note(record)
    return examples, skipped, realigned, unlocated


def carve_by_group(
    examples: list[QaExample], config: ExtractiveQaConfig, key: str
) -> tuple[list[QaExample], list[QaExample], str]:
    """(train, dev, dev_source): whole articles (titles) on one side, chosen by `carve_split`."""
    groups = list(dict.fromkeys(example.group for example in examples))
    if len(groups) < 2:
        raise DataError(
            f"{key}: carving a dev set keeps whole articles apart, but {config.train_path} has "
            f"{len(groups)} article; set dev_path"
        )
    _, dev_index = carve_split(len(groups), config.dev_fraction, config.split_seed)
    dev_groups = {groups[i] for i in dev_index}
    untitled = any(group.startswith(UNTITLED) for group in groups)
    source = (
        f"{config.train_path}: the questions of a seeded {config.dev_fraction:g} of its {len(groups)} "
        f"articles (by title{', or by context without one' if untitled else ''}; split_seed "
        f"{config.split_seed}), so no context is in both splits"
    )
    return (
        [e for e in examples if e.group not in dev_groups],
        [e for e in examples if e.group in dev_groups],
        source,
    )


def load_qa_data(config: ExtractiveQaConfig, data_dir: Path | None, key: str) -> QaData:
    """Train and dev questions; dev from dev_path, or whole articles carved out of train_path."""
    records, notes = read_records(config, config.train_path, data_dir, f"{key}.train_path", "train")
    train_examples, train_skipped, train_realigned, unlocated = examples_from(records)
    data = QaData(train_examples, [], "", {"train": notes + train_skipped}, {"train": train_realigned})
    if config.dev_path is None:
        data.train, data.dev, data.dev_source = carve_by_group(train_examples, config, key)
    else:
        records, notes = read_records(config, config.dev_path, data_dir, f"{key}.dev_path", "validation")
        data.dev, dev_skipped, data.realigned["dev"], _ = examples_from(records)
        data.skipped["dev"], data.dev_source = notes + dev_skipped, config.dev_path
    # A training question needs its span; a dev question is scored by its references' texts even
    # when none is found in the context (the official script scores it, usually 0).
    data.train, untrainable = without_unlocated(data.train, unlocated)
    data.skipped["train"] += untrainable
    for split, examples in (("train", data.train), ("dev", data.dev)):
        if not examples:
            reasons = "; ".join(data.skipped.get(split, [])[:3])
            raise DataError(f"{key}: no usable {split} question" + (f" ({reasons})" if reasons else ""))
    if config.max_dev_examples is not None and len(data.dev) > config.max_dev_examples:
        chosen = sorted(seeded_order(len(data.dev), config.split_seed)[: config.max_dev_examples])
        data.dev = [data.dev[i] for i in chosen]
    return data


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Layout:
    """A window is prefix + question + middle + context piece + suffix (token ids)."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    token_types: bool  # BERT's segment ids: 0 up to the first [SEP], 1 after
    description: str


def layout_for(family: str, tokenizer: Any, model_dir: Path) -> Layout:
    if family == "encoder":
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls_id is None or sep_id is None:
            raise ArtifactError(f"{model_dir}: extractive QA with a masked LM needs [CLS] and [SEP] tokens")
        return Layout([cls_id], [sep_id], [sep_id], True, "[CLS] question [SEP] context [SEP]")
    if family == "causal":
        boundary = boundary_token_id(tokenizer)
        if boundary is None:
            raise ArtifactError(f"{model_dir}: the tokenizer has no eos or bos token to mark boundaries")
        name = tokenizer.convert_ids_to_tokens(boundary)
        return Layout([boundary], [boundary], [], False, f"{name} question {name} context")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ArtifactError(f"{model_dir}: extractive QA with T5 needs an eos token")
    words = tokenizer(["question:", "context:"], add_special_tokens=False)["input_ids"]
    return Layout(words[0], words[1], [eos_id], False, "question: question context: context </s>")


@dataclass(frozen=True)
class Window:
    example: int  # index of its question in the split
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # each token's characters in the context; None outside it
    start_position: int  # the answer's first and last token, or 0 and 0: not in this window
    end_position: int


def spans(num_tokens: int, budget: int, stride: int) -> Iterator[tuple[int, int]]:
    """[begin, end) token ranges of `budget` tokens, each overlapping the previous by `stride`."""
    begin = 0
    while True:
        end = min(begin + budget, num_tokens)
        yield begin, end
        if end >= num_tokens:
            return
        begin = end - stride


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The first token reaching into [start, end) and the last token starting in it, when the
    window's tokens cover the whole answer (run_qa.py's test), else None."""
    if not offsets or offsets[0][0] > start or offsets[-1][1] < end:
        return None
    first = next(i for i, (_, token_end) in enumerate(offsets) if token_end > start)
    last = max(i for i, (token_start, _) in enumerate(offsets) if token_start < end)
    return first, max(first, last)


def make_windows(
    examples: list[QaExample], tokenizer: Any, layout: Layout, max_length: int, doc_stride: int
) -> tuple[list[Window], int]:
    """Every question's windows, and how many questions were cut (to at most half a window)."""
    fixed = len(layout.prefix) + len(layout.middle) + len(layout.suffix)
    question_budget = min((max_length - fixed) // 2, max_length - fixed - doc_stride - 1)
    if question_budget < 1:
        raise ConfigError(
            f"max_length {max_length} leaves no room for a question beside {fixed} marker tokens and "
            f"doc_stride {doc_stride}; raise max_length or lower doc_stride"
        )
    questions = tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]
    unique = list(dict.fromkeys(e.context for e in examples))
    encoded = tokenizer(unique, add_special_tokens=False, return_offsets_mapping=True)
    contexts = {
        text: (ids, [(int(a), int(b)) for a, b in offsets])
        for text, ids, offsets in zip(unique, encoded["input_ids"], encoded["offset_mapping"], strict=True)
    }
    windows, truncated = [], 0
    for index, (example, question) in enumerate(zip(examples, questions, strict=True)):
        truncated += len(question) > question_budget
        head = [*layout.prefix, *question[:question_budget], *layout.middle]
        ids, offsets = contexts[example.context]
        for begin, end in spans(len(ids), max_length - len(head) - len(layout.suffix), doc_stride):
            found = answer_tokens(offsets[begin:end], example.answer_start, example.answer_end)
            start, stop = (0, 0) if found is None else (len(head) + found[0], len(head) + found[1])
            body = ids[begin:end]
            types = [0] * len(head) + [1] * (len(body) + len(layout.suffix)) if layout.token_types else []
            windows.append(
                Window(
                    index,
                    [*head, *body, *layout.suffix],
                    types,
                    [None] * len(head) + list(offsets[begin:end]) + [None] * len(layout.suffix),
                    start,
                    stop,
                )
            )
    return windows, truncated


# ---------------------------------------------------------------------------------------------
# Prediction


def top_indices(values: list[float], n: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:n]


def best_answer(
    context: str, scored: list[tuple[Window, list[float], list[float]]], max_answer_length: int
) -> str:
    """The context text of the best span over the windows: start + end logit, among the N_BEST
    starts and ends of each window, both on context tokens, start <= end, at most
    max_answer_length tokens; "" when no window has one."""
    best_score, best = float("-inf"), ""
    for window, starts, ends in scored:
        for s in top_indices(starts, N_BEST):
            for e in top_indices(ends, N_BEST):
                first, last = window.offsets[s], window.offsets[e]
                if first is None or last is None or e < s or e - s + 1 > max_answer_length:
                    continue
                if starts[s] + ends[e] > best_score:
                    best_score, best = starts[s] + ends[e], context[first[0] : last[1]]
    return best.strip()  # byte-level tokens carry their leading space


# ---------------------------------------------------------------------------------------------
# Model


@dataclass
class Reader:
    """A question-answering model and how to run it on windows."""

    model: Any
    family: str
    pad_id: int
    frozen: bool  # linear probe: the body runs in eval mode without gradients

    def states(self, input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        """The per-token states `qa_outputs` reads, as each model's own forward computes them."""
        model = self.model
        if self.family == "seq2seq":
            encoded = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return model.decoder(
                input_ids=model._shift_right(input_ids),
                encoder_hidden_states=encoded,
                encoder_attention_mask=mask,
            ).last_hidden_state
        extra = {"token_type_ids": types} if types is not None else {}
        return model.base_model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state

    def logits(self, windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) logits [batch, width]; padding positions can never be chosen."""
        input_ids, mask = pad_right([w.input_ids for w in windows], self.pad_id)
        types = pad_right([w.token_type_ids for w in windows], 0)[0] if windows[0].token_type_ids else None
        if self.frozen:
            self.model.eval()
            with torch.no_grad():
                states = self.states(input_ids, mask, types)
        else:
            states = self.states(input_ids, mask, types)
        start, end = self.model.qa_outputs(states).float().unbind(-1)
        floor = torch.finfo(start.dtype).min
        return start.masked_fill(mask == 0, floor), end.masked_fill(mask == 0, floor)


def span_loss(
    start: torch.Tensor, end: torch.Tensor, windows: list[Window], reduction: str = "mean"
) -> torch.Tensor:
    """BERT's span loss: the mean of the start and the end position's cross-entropy."""
    starts = torch.tensor([w.start_position for w in windows])
    ends = torch.tensor([w.end_position for w in windows])
    return (
        F.cross_entropy(start, starts, reduction=reduction) + F.cross_entropy(end, ends, reduction=reduction)
    ) / 2


def build_reader(
    model_dir: Path, family: str, init: Init, strategy: str, pad_id: int, seed: int
) -> tuple[Reader, int]:
    """AutoModelForQuestionAnswering of the checkpoint (pretrained or random) and its trainable count."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    config = AutoConfig.from_pretrained(model_dir, num_labels=2, pad_token_id=pad_id)
    try:
        model = instantiate(AutoModelForQuestionAnswering, model_dir, config, init, seed)
    except ValueError as err:
        raise ArtifactError(
            f"{model_dir}: no question-answering head for this architecture ({err})"
        ) from None
    head = getattr(model, "qa_outputs", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 2:
        raise ArtifactError(f"{type(model).__name__}: expected a `qa_outputs` Linear(hidden, 2) span head")
    if strategy == "linear_probe":
        trainable = freeze_all_but(model, HEAD_PARAMETERS)
    else:
        trainable = sum(p.numel() for p in model.parameters())
    return Reader(model, family, pad_id, strategy == "linear_probe"), trainable


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def make_evaluate(
    reader: Reader, dev: list[QaExample], windows: list[Window], config: ExtractiveQaConfig, last: list[str]
) -> Callable[[], dict[str, Any]]:
    """Dev scores (and the span loss per window); `last` receives the latest predictions."""

    def evaluate() -> dict[str, Any]:
        scored: list[list[tuple[Window, list[float], list[float]]]] = [[] for _ in dev]
        loss_sum = 0.0
        with torch.inference_mode():
            for chunk in batches(windows, config.batch_size):
                start, end = reader.logits(chunk)
                loss_sum += float(span_loss(start, end, chunk, reduction="sum"))
                for row, window in enumerate(chunk):
                    width = len(window.input_ids)
                    scored[window.example].append(
                        (window, start[row, :width].tolist(), end[row, :width].tolist())
                    )
        last[:] = [
            best_answer(e.context, s, config.max_answer_length) for e, s in zip(dev, scored, strict=True)
        ]
        scores = squad_scores(last, [e.references for e in dev])
        return {
            "dev_f1": scores["f1"],
            "dev_exact_match": scores["exact_match"],
            "dev_loss": loss_sum / len(windows),
        }

    return evaluate


# ---------------------------------------------------------------------------------------------
# The runner


def run_extractive_qa(
    config: ExtractiveQaConfig,
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
    data = load_qa_data(config, data_dir, key)
    order = seeded_order(len(data.train), seed)
    train_examples = [data.train[i] for i in order[: cell.train_size or len(order)]]
    family = model_family(model_dir)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; padding is masked anyway
    if tokenizer.pad_token_id is None:
        raise ArtifactError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad with")
    if not getattr(tokenizer, "is_fast", False):
        raise ArtifactError(f"{model_dir}: extractive QA needs a fast tokenizer (character offsets)")
    reader, trainable = build_reader(model_dir, family, init, cell.strategy, tokenizer.pad_token_id, seed)
    layout = layout_for(family, tokenizer, model_dir)
    try:
        max_length = min(config.max_length, max_positions(reader.model.config))
    except ArtifactError:
        if family != "seq2seq":
            raise
        max_length = config.max_length  # T5's relative positions set no limit
    if config.doc_stride >= max_length // 2:
        raise ConfigError(
            f"{key}: doc_stride {config.doc_stride} must be below half of the model's "
            f"{max_length}-token windows (max_length is capped at the model's positions)"
        )
    train_windows, train_cut = make_windows(train_examples, tokenizer, layout, max_length, config.doc_stride)
    dev_windows, dev_cut = make_windows(data.dev, tokenizer, layout, max_length, config.doc_stride)
    predictions: list[str] = []

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        windows = [train_windows[i] for i in chosen]
        return span_loss(*reader.logits(windows), windows)

    evaluate = make_evaluate(reader, data.dev, dev_windows, config, predictions)
    result = fit_cell(
        config, cell, init, seed, reader.model, batch_loss, len(train_windows), evaluate, progress
    )
    metrics: dict[str, Any] = {
        **cell_metrics(
            config,
            cell,
            init,
            seed,
            result,
            family=family,
            input_format=layout.description,
            train_size=len(train_examples),
            dev_size=len(data.dev),
            dev_source=data.dev_source,
            skipped=data.skipped,
            model=reader.model,
            trainable_parameters=trainable,
        ),
        # Features: one per window; the optimiser's examples are windows, as in run_qa.py.
        "train_windows": len(train_windows),
        "dev_windows": len(dev_windows),
        "train_windows_with_answer": sum(w.start_position > 0 for w in train_windows),
        "max_length": max_length,
        "doc_stride": config.doc_stride,
        "max_answer_length": config.max_answer_length,
        "n_best": N_BEST,
        "truncated_questions": {"train": train_cut, "dev": dev_cut},
        "realigned_answers": data.realigned,
        "unlocated_dev_answers": sum(not e.located for e in data.dev),
    }
    if config.save_model:
        reader.model.save_pretrained(output_dir / "model")
        tokenizer.save_pretrained(output_dir / "model")
        write_json(
            output_dir / "model" / TASK_META_FILE,
            {
                "task": config.id,
                "input_format": layout.description,
                "family": family,
                "max_length": max_length,
            },
        )
    write_json(
        output_dir / PREDICTIONS_FILE, {e.id: text for e, text in zip(data.dev, predictions, strict=True)}
    )
    return write_cell(output_dir, metrics, result, began)
