"""Token classification (NER, chunking, POS): a tag for every word of a sentence.

One cell of a task's grid (strategy, train size, seed) for one init. Words are encoded one at a time
and each word's tag is learnt and predicted on its first sub-token that is not a bare word-start
marker (the others are never targets).
Heads: Hugging Face's `AutoModelForTokenClassification` for every paradigm, a linear classifier
over per-token states:

- masked LMs (BERT, Devlin et al. 2019, section 5.3): `[CLS] w1 ... wn [SEP]`, bidirectional states;
- causal LMs (GPT-2's `GPT2ForTokenClassification`): `<boundary> w1 ... wn`, where the boundary is
  the token the pre-training packing put between documents; each state sees only its left context;
- encoder-decoders (T5's `T5ForTokenClassification`): the encoder's states of `w1 ... wn </s>`.

`linear_probe` runs the frozen body under `torch.no_grad` and trains only the one `nn.Linear`
(`classifier`); `finetune` trains every weight. Scored at the entity level with conlleval's chunk
rules, exactly as seqeval's default mode (conlleval) does, and by word accuracy.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.core.errors import ArtifactError, ConfigError, DataError, LmforgeError
from lmforge.core.logs import get_logger
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.infra.progress import ProgressTarget
from lmforge.tasks.classification import TASK_META_FILE, model_family
from lmforge.tasks.config import Cell, TokenClassificationConfig
from lmforge.tasks.data import load_hub_split, parse_hf_uri
from lmforge.tasks.finetune import (
    IGNORE_INDEX,
    Init,
    cell_metrics,
    fit_cell,
    freeze_all_but,
    instantiate,
    new_parameter_names,
    pad_right,
    seeded_order,
    write_cell,
)
from lmforge.tasks.modeling import boundary_token_id, load_tokenizer, max_positions, write_json
from lmforge.tasks.readers import Table, carve_split, column_name, read_table, read_text

log = get_logger(__name__)
OUTSIDE = "O"
CONLL_EXTENSIONS = (".txt", ".conll", ".txt.gz", ".conll.gz")
DOCSTART = "-DOCSTART-"


# ---------------------------------------------------------------------------------------------
# Entity-level scoring: conlleval's chunk rules (seqeval's default, mode=None), micro-averaged


def split_tag(tag: str) -> tuple[str, str]:
    """(chunk prefix, type) as seqeval reads a tag: the first character, and the rest after its
    first "-" ("O" -> ("O", "_"), "B-PER" -> ("B", "PER"), "I-MISC-X" -> ("I", "MISC-X"))."""
    return tag[:1], tag[1:].split("-", 1)[-1] or "_"


def chunk_ends(previous: str, tag: str, previous_type: str, type_: str) -> bool:
    if previous in ("E", "S"):
        return True
    if previous in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return previous not in ("O", ".") and previous_type != type_


def chunk_starts(previous: str, tag: str, previous_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if previous in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and previous_type != type_


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """The chunks of a tag sequence as (type, first index, last index): an I- after O or after
    another type starts a chunk, a type change ends one, and the sequence end closes the last."""
    found, previous, previous_type, begin = [], "O", "", 0
    for index, full in enumerate([*tags, OUTSIDE]):
        tag, type_ = split_tag(full)
        if chunk_ends(previous, tag, previous_type, type_):
            found.append((previous_type, begin, index - 1))
        if chunk_starts(previous, tag, previous_type, type_):
            begin = index
        previous, previous_type = tag, type_
    return found


def tagging_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities (a predicted entity counts when its type and
    span match a gold one exactly; 0 where a denominator is 0) and word accuracy, as seqeval's
    default mode computes them: sentences joined with an "O" after each, chunks read from that."""
    for index, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {index}: {len(gold_tags)} gold tags, {len(predicted_tags)} predicted")
    flat_gold = [tag for tags in gold for tag in [*tags, OUTSIDE]]
    flat_predicted = [tag for tags in predicted for tag in [*tags, OUTSIDE]]
    gold_set, predicted_set = set(entities(flat_gold)), set(entities(flat_predicted))
    correct = len(gold_set & predicted_set)
    precision = correct / len(predicted_set) if predicted_set else 0.0
    recall = correct / len(gold_set) if gold_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    num_words = sum(len(tags) for tags in gold)
    matches = sum(g == p for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True))
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": matches / num_words if num_words else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Data: CoNLL column files or tables of token and tag lists


@dataclass(frozen=True)
class Sentence:
    """One sentence's words and tags, and where it came from (`lines`: each word's line in a
    CoNLL file; None for a table row, named by `row`)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    row: str
    source: str = ""
    lines: tuple[int, ...] | None = None

    def where(self, word: int) -> str:
        return self.row if self.lines is None else f"{self.source}:{self.lines[word]}"


@dataclass
class TaskData:
    train: list[Sentence]
    dev: list[Sentence]
    labels: list[str]
    dev_source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)
    schemes: dict[str, str] = field(default_factory=dict)  # the scheme each split was read in


def conll_column(column: int, width: int, key: str, source: str) -> int:
    index = column if column >= 0 else width + column
    if not 0 <= index < width:
        raise ConfigError(
            f"{key}: column {column} is out of range for {source}, whose lines have {width} fields"
        )
    return index


def parse_conll(
    text: str, source: str, config: TokenClassificationConfig, key: str
) -> tuple[list[Sentence], list[str]]:
    """Sentences of a CoNLL file: one word per line, fields split on whitespace, blank lines between
    sentences, `-DOCSTART-` lines skipped, and so are comment lines (`# id = ...`, as CoNLL-U and
    MultiCoNER write them: a `#` line whose field count is not the file's). A line whose field
    count differs from the file's usual count is listed, and its sentence left out (a word short
    would shift its tags)."""
    lines = [(number, line.split()) for number, line in enumerate(text.split("\n"), start=1)]
    usual = Counter(len(fields) for _, fields in lines if fields and not fields[0].startswith("#"))
    common = max(usual.items(), key=lambda item: (item[1], item[0]))[0] if usual else 0
    lines = [(n, f) for n, f in lines if not (f and f[0].startswith("#") and len(f) != common)]
    counts = Counter(len(fields) for _, fields in lines if fields and fields[0] != DOCSTART)
    if not counts:
        raise DataError(
            f"{key}: {source} holds no CoNLL lines (one word per line, blank lines between sentences)"
        )
    width = max(counts.items(), key=lambda item: (item[1], item[0]))[0]
    word_column = conll_column(config.conll_token_column, width, f"{key}.conll_token_column", source)
    tag_column = conll_column(config.conll_tag_column, width, f"{key}.conll_tag_column", source)
    if word_column == tag_column:
        raise ConfigError(
            f"{key}: conll_token_column and conll_tag_column both name column {word_column} of {source}"
        )
    sentences: list[Sentence] = []
    skipped: list[str] = []
    current: list[tuple[int, list[str]]] = []
    broken = False
    for number, fields in [*lines, (len(lines) + 1, [])]:
        if not fields or fields[0] == DOCSTART:
            if current and not broken:
                sentences.append(
                    Sentence(
                        tuple(f[word_column] for _, f in current),
                        tuple(f[tag_column] for _, f in current),
                        f"{source}:{current[0][0]}",
                        source,
                        tuple(n for n, _ in current),
                    )
                )
            current, broken = [], False
        elif len(fields) != width:
            skipped.append(
                f"{source}:{number}: expected {width} fields, found {len(fields)}; sentence left out"
            )
            broken = True
        else:
            current.append((number, fields))
    return sentences, skipped


def as_list(value: Any) -> list[Any] | None:
    """A token or tag list: a list, a JSON list in a string (csv cells), or words split on whitespace."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, list) else None
        return text.split()
    return None


def read_hub(path: str, key: str, split: str, tags_column: str | int) -> tuple[Table, list[str] | None]:
    """A hub split as a table, with the tag names of a `Sequence(ClassLabel)` tag column."""
    hub = parse_hf_uri(path, key, None, split)
    try:
        data = load_hub_split(hub)
    except LmforgeError:
        raise
    except Exception as err:  # network, unknown data set, config or split: all mean "cannot read"
        raise DataError(f"{key}: cannot load {path!r}: {type(err).__name__}: {err}") from None
    rows = data.to_list()
    table = Table(path, list(data.column_names), rows, list(range(1, len(rows) + 1)), numbered_by_row=True)
    name = column_name(table, tags_column, f"{key}.columns.tags")
    inner = getattr(data.features.get(name), "feature", None)
    names = list(inner.names) if inner is not None and type(inner).__name__ == "ClassLabel" else None
    return table, names


def read_tagged_table(
    config: TokenClassificationConfig, path: str, data_dir: Path | None, key: str, split: str
) -> tuple[list[Sentence], list[str]]:
    """Rows with a token list and a tag list; integer tags name the hub's class names or `labels`."""
    field_key = f"{key}.{'train' if split == 'train' else 'dev'}_path"
    if is_hf_uri(path):
        table, names = read_hub(path, field_key, split, config.columns["tags"])
    else:
        table = read_table(path, data_dir, field_key, format=config.format, split=split)
        names = None
        table = replace(
            table, source=path, skipped=[note.replace(table.source, path, 1) for note in table.skipped]
        )
    names = names if names is not None else config.labels
    tokens = column_name(table, config.columns["tokens"], f"{key}.columns.tokens")
    tags = column_name(table, config.columns["tags"], f"{key}.columns.tags")
    sentences, skipped = [], list(table.skipped)
    for index, row in enumerate(table.rows):
        words, values, where = as_list(row[tokens]), as_list(row[tags]), table.where(index)
        if not words or values is None or len(values) != len(words):
            found = (
                "no tokens"
                if not words
                else f"{len(words)} tokens but {'no' if values is None else len(values)} tags"
            )
            skipped.append(f"{where}: {found}")
            continue
        if any(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if names is None:
                raise DataError(
                    f"{key}: {where} has integer tags and {path} names no tag classes; set `labels` (tag names in class order)"
                )
            outside = [v for v in values if not 0 <= int(v) < len(names)]
            if outside:
                raise DataError(
                    f"{key}: tag {outside[0]} at {where} is not a class index 0-{len(names) - 1} of {names}"
                )
            values = [names[int(v)] for v in values]
        sentences.append(Sentence(tuple(str(w) for w in words), tuple(str(v).strip() for v in values), where))
    return sentences, skipped


def is_conll(config: TokenClassificationConfig, path: str) -> bool:
    if config.format == "conll":
        return True
    return config.format == "auto" and not is_hf_uri(path) and path.lower().endswith(CONLL_EXTENSIONS)


def read_sentences(
    config: TokenClassificationConfig, path: str, data_dir: Path | None, key: str, split: str
) -> tuple[list[Sentence], list[str]]:
    if is_conll(config, path):
        field_key = f"{key}.{'train' if split == 'train' else 'dev'}_path"
        text = read_text(resolve_file(path, data_dir, field_key), field_key)
        sentences, skipped = parse_conll(text, path, config, key)
    else:
        sentences, skipped = read_tagged_table(config, path, data_dir, key, split)
    if not sentences:
        shown = "; ".join(skipped[:3])
        raise DataError(f"{key}: {path} holds no usable sentence" + (f" ({shown})" if shown else ""))
    return sentences, skipped


def to_bio(tags: tuple[str, ...]) -> tuple[str, ...]:
    """IOB1 to BIO: an I-X that begins a chunk (after O, another type, or at the start) becomes B-X."""
    converted, previous_type = [], None
    for tag in tags:
        prefix, _, type_ = tag.partition("-")
        chunk = prefix in ("B", "I") and bool(type_)
        if chunk and prefix == "I" and previous_type != type_:
            tag = f"B-{type_}"
        converted.append(tag)
        previous_type = type_ if chunk else None
    return tuple(converted)


def with_scheme(sentences: list[Sentence], scheme: str) -> tuple[list[Sentence], str]:
    """The sentences in BIO, and the scheme they were read in (auto: iob1 when any I- begins a chunk)."""
    changed = [to_bio(s.tags) for s in sentences]
    if scheme == "bio" or (
        scheme == "auto" and all(c == s.tags for c, s in zip(changed, sentences, strict=True))
    ):
        return sentences, "bio"
    return [replace(s, tags=c) for s, c in zip(sentences, changed, strict=True)], "iob1"


def load_task_data(config: TokenClassificationConfig, data_dir: Path | None, key: str) -> TaskData:
    """Train and dev sentences in BIO, with one tag set read from train (or config.labels)."""
    train_rows, train_skipped = read_sentences(config, config.train_path, data_dir, key, "train")
    train_rows, train_scheme = with_scheme(train_rows, config.scheme)
    skipped, schemes = {"train": train_skipped}, {"train": train_scheme}
    if config.labels is not None:
        labels = list(config.labels)
    else:  # from the whole train file, so a carved dev set has no tag the set lacks
        found = {tag for s in train_rows for tag in s.tags}
        labels = ([OUTSIDE] if OUTSIDE in found else []) + sorted(found - {OUTSIDE})
    if config.dev_path is None:
        train_index, dev_index = carve_split(len(train_rows), config.dev_fraction, config.split_seed)
        dev_rows = [train_rows[i] for i in dev_index]
        train_rows = [train_rows[i] for i in train_index]
        dev_source = f"{config.train_path} (a seeded {config.dev_fraction:g} of its sentences, split_seed {config.split_seed})"
    else:
        dev_rows, skipped["dev"] = read_sentences(config, config.dev_path, data_dir, key, "validation")
        dev_rows, schemes["dev"] = with_scheme(dev_rows, config.scheme)
        dev_source = config.dev_path
    known = set(labels)
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        for sentence in rows:
            for word, tag in enumerate(sentence.tags):
                if tag not in known:
                    raise DataError(
                        f"{key}: {split} tag {tag!r} at {sentence.where(word)} is not in the tag set {labels}"
                    )
    if config.max_dev_examples is not None and len(dev_rows) > config.max_dev_examples:
        chosen = sorted(seeded_order(len(dev_rows), config.split_seed)[: config.max_dev_examples])
        dev_rows = [dev_rows[i] for i in chosen]
    return TaskData(train_rows, dev_rows, labels, dev_source, skipped, schemes)


# ---------------------------------------------------------------------------------------------
# Words to sub-tokens


def marks_word_starts_by_space(tokenizer: Any) -> bool:
    """Whether the tokenizer spells a word differently after a space (byte-level BPE: "Ġw"), so
    that later words must be encoded with their leading space, as they occur in running text.
    WordPiece and SentencePiece's Metaspace give the same pieces either way."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" a", add_special_tokens=False)["input_ids"]
    return bool(bare != spaced)


def word_pieces(tokenizer: Any, words: list[tuple[str, ...]]) -> list[list[list[int]]]:
    """Each sentence's words as sub-token ids, each word encoded on its own: the first without a
    leading space, later ones with one where the tokenizer marks word starts by a space. A word the
    tokenizer drops entirely (say, a lone control character) becomes the unknown token, if any."""
    spaced = marks_word_starts_by_space(tokenizer)
    unknown = [] if tokenizer.unk_token_id is None else [int(tokenizer.unk_token_id)]
    flat = [
        (" " + word if spaced and index > 0 else word)
        for sentence in words
        for index, word in enumerate(sentence)
    ]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    result, start = [], 0
    for sentence in words:
        result.append([list(pieces) or unknown for pieces in ids[start : start + len(sentence)]])
        start += len(sentence)
    return result


def bare_markers(tokenizer: Any) -> frozenset[int]:
    """The ids of tokens that are only a word-start marker or whitespace (byte-level BPE's "Ġ",
    SentencePiece's "▁"): a word split as "▁" + "1996" is tagged on "1996", since the marker alone
    says nothing of the word."""
    special = set(tokenizer.all_special_ids)
    return frozenset(
        i for i in range(len(tokenizer)) if i not in special and not tokenizer.decode([i]).strip()
    )


@dataclass(frozen=True)
class Encoded:
    """One sentence's input ids and, per word, the position of its tagged sub-token (the first that
    is not a bare marker; None: the word was cut by max_length or has no sub-token; it is predicted
    "O")."""

    ids: list[int]
    positions: list[int | None]


def encode(
    pieces: list[list[int]],
    prefix: list[int],
    suffix: list[int],
    max_length: int,
    markers: frozenset[int] = frozenset(),
) -> Encoded:
    """`prefix + sub-tokens + suffix`, the sub-tokens cut so the whole fits max_length. A word's
    position is its first sub-token that is not a bare marker (its first, if all are)."""
    budget = max_length - len(prefix) - len(suffix)
    ids = list(prefix)
    positions: list[int | None] = []
    for word in pieces:
        room = budget - (len(ids) - len(prefix))
        if not word or room <= 0:
            positions.append(None)
            continue
        kept = word[:room]
        positions.append(len(ids) + next((i for i, piece in enumerate(kept) if piece not in markers), 0))
        ids += kept
    return Encoded(ids + suffix, positions)


# ---------------------------------------------------------------------------------------------
# The tagger: model, its layout per paradigm, and a forward over encoded sentences


@dataclass
class Tagger:
    model: Any
    tokenizer: Any
    prefix: list[int]
    suffix: list[int]
    pad_id: int
    max_length: int
    probe: bool
    trainable_parameters: int
    input_format: str
    markers: frozenset[int]  # bare word-start markers, never a word's tagged sub-token

    def logits(self, batch: list[Encoded]) -> torch.Tensor:
        """(batch, width, labels) logits; a probe's body runs frozen, in eval mode, without gradients."""
        input_ids, attention_mask = pad_right([row.ids for row in batch], self.pad_id)
        body = self.model.base_model
        if self.probe:
            body.eval()  # fixed features: no dropout inside the frozen body
            with torch.no_grad():
                states = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            states = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model.classifier(self.model.dropout(states))


def build_tagger(
    model_dir: Path, family: str, init: Init, labels: list[str], strategy: str, seed: int, config_max: int
) -> Tagger:
    """The checkpoint's `AutoModelForTokenClassification` (pretrained or random) and its input layout."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ArtifactError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked, so any token will do
    model_config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(AutoModelForTokenClassification, model_dir, model_config, init, seed)
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, torch.nn.Linear) or not hasattr(model, "dropout"):
        raise ArtifactError(
            f"{type(model).__name__}: expected a token classifier with one nn.Linear `classifier` head"
        )
    probe = strategy == "linear_probe"
    if probe:
        head = new_parameter_names(AutoModelForTokenClassification, model_dir, model_config)
        if head != {"classifier.weight", "classifier.bias"}:
            raise ArtifactError(
                f"{type(model).__name__} adds {sorted(head)} to {model_dir}; a linear probe trains one Linear"
            )
        trainable = freeze_all_but(model, head)
    else:
        trainable = sum(p.numel() for p in model.parameters())
    prefix, suffix, form = layout(tokenizer, family, model_dir)
    try:
        limit = min(config_max, max_positions(model.config))
    except ArtifactError:  # T5's relative positions set no limit
        limit = config_max
    if limit <= len(prefix) + len(suffix):
        raise ConfigError(f"max_length {limit} leaves no room for words after {form}'s special tokens")
    return Tagger(
        model,
        tokenizer,
        prefix,
        suffix,
        tokenizer.pad_token_id,
        limit,
        probe,
        trainable,
        form,
        bare_markers(tokenizer),
    )


def layout(tokenizer: Any, family: str, model_dir: Path) -> tuple[list[int], list[int], str]:
    """(prefix ids, suffix ids, a description) of a sentence's input for the paradigm."""
    if family == "encoder":
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ArtifactError(f"{model_dir}: a masked-LM tagger needs [CLS] and [SEP] tokens")
        return (
            [tokenizer.cls_token_id],
            [tokenizer.sep_token_id],
            f"{tokenizer.cls_token} w1 ... wn {tokenizer.sep_token}; first sub-token of each word tagged",
        )
    if family == "causal":
        boundary = boundary_token_id(tokenizer)
        prefix = [] if boundary is None else [boundary]
        shown = "" if boundary is None else f"{tokenizer.convert_ids_to_tokens(boundary)} "
        return prefix, [], f"{shown}w1 ... wn; causal states, first sub-token of each word tagged"
    if tokenizer.eos_token_id is None:
        raise ArtifactError(f"{model_dir}: a T5 encoder input ends with an eos token; the tokenizer has none")
    return (
        [],
        [tokenizer.eos_token_id],
        f"w1 ... wn {tokenizer.eos_token} (T5 encoder states); first sub-token of each word tagged",
    )


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def targets(batch: list[Encoded], tags: list[list[int]], width: int) -> torch.Tensor:
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, (encoded, sentence_tags) in enumerate(zip(batch, tags, strict=True)):
        for position, tag in zip(encoded.positions, sentence_tags, strict=True):
            if position is not None:
                labels[row, position] = tag
    return labels


def make_evaluate(
    tagger: Tagger, dev: list[Sentence], dev_ids: list[Encoded], labels: list[str], batch_size: int
) -> Callable[[], dict[str, Any]]:
    index = {name: i for i, name in enumerate(labels)}

    def evaluate() -> dict[str, Any]:
        predicted: list[list[str]] = []
        loss_sum, count = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(dev), batch_size):
                batch = dev_ids[start : start + batch_size]
                logits = tagger.logits(batch).float()
                gold = targets(
                    batch,
                    [[index[t] for t in s.tags] for s in dev[start : start + batch_size]],
                    logits.shape[1],
                )
                loss_sum += float(F.cross_entropy(logits.flatten(0, 1), gold.flatten(), reduction="sum"))
                count += int((gold != IGNORE_INDEX).sum())
                best = logits.argmax(-1).tolist()
                for row, encoded in enumerate(batch):
                    predicted.append(
                        [OUTSIDE if p is None else labels[best[row][p]] for p in encoded.positions]
                    )
        scores = tagging_metrics([list(s.tags) for s in dev], predicted)
        return {
            **{f"dev_{name}": value for name, value in scores.items()},
            "dev_loss": loss_sum / max(count, 1),
        }

    return evaluate


def run_token_classification(
    config: TokenClassificationConfig,
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
    data = load_task_data(config, data_dir, f"finetune.tasks[{config.id}]")
    order = seeded_order(len(data.train), seed)
    train_rows = [data.train[i] for i in order[: cell.train_size or len(data.train)]]
    family = model_family(model_dir)
    tagger = build_tagger(model_dir, family, init, data.labels, cell.strategy, seed, config.max_length)
    index = {name: i for i, name in enumerate(data.labels)}
    encoded = {
        split: [
            encode(pieces, tagger.prefix, tagger.suffix, tagger.max_length, tagger.markers)
            for pieces in word_pieces(tagger.tokenizer, [s.words for s in rows])
        ]
        for split, rows in (("train", train_rows), ("dev", data.dev))
    }
    train_tags = [[index[tag] for tag in s.tags] for s in train_rows]

    def batch_loss(chosen: list[int]) -> torch.Tensor:
        batch = [encoded["train"][i] for i in chosen]
        logits = tagger.logits(batch)
        gold = targets(batch, [train_tags[i] for i in chosen], logits.shape[1])
        return F.cross_entropy(logits.flatten(0, 1), gold.flatten(), ignore_index=IGNORE_INDEX)

    evaluate = make_evaluate(tagger, data.dev, encoded["dev"], data.labels, config.batch_size)
    result = fit_cell(config, cell, init, seed, tagger.model, batch_loss, len(train_rows), evaluate, progress)
    metrics: dict[str, Any] = {
        **cell_metrics(
            config,
            cell,
            init,
            seed,
            result,
            family=family,
            input_format=tagger.input_format,
            train_size=len(train_rows),
            dev_size=len(data.dev),
            dev_source=data.dev_source,
            skipped=data.skipped,
            model=tagger.model,
            trainable_parameters=tagger.trainable_parameters,
        ),
        "max_length": tagger.max_length,
        "train_words": sum(len(s.words) for s in train_rows),
        "labels": data.labels,
        "scheme": data.schemes,
        "dev_words": sum(len(s.words) for s in data.dev),
        # Words past max_length: never trained on; predicted "O" (and scored) on the dev set.
        "truncated_words": {
            split: sum(p is None for row in rows for p in row.positions) for split, rows in encoded.items()
        },
    }
    if config.save_model:
        tagger.model.save_pretrained(output_dir / "model")
        tagger.tokenizer.save_pretrained(output_dir / "model")
        meta = {
            "task": config.id,
            "labels": data.labels,
            "input_format": tagger.input_format,
            "family": family,
        }
        write_json(output_dir / "model" / TASK_META_FILE, meta)
    return write_cell(output_dir, metrics, result, began)
