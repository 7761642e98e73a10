"""Token classification: the conlleval/seqeval entity scorer against hand-worked cases, CoNLL and
table reading (IOB1 to BIO, skipped lines, hub tag classes), word-to-sub-token alignment, and runs of
every paradigm whose metrics are checked against the saved model run one sentence at a time through
Hugging Face's own `AutoModelForTokenClassification`."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks import FINETUNE_TASKS
from lmforge.tasks.config import Cell, TokenClassificationConfig
from lmforge.tasks.modeling import load_tokenizer
from lmforge.tasks.token_classification import (
    bare_markers,
    encode,
    entities,
    load_task_data,
    tagging_metrics,
    to_bio,
    word_pieces,
)
from tests.unit.test_tasks_support import build_tiny_bert, build_tiny_gpt2
from tests.unit.test_tasks_t5_support import build_tiny_t5

pytestmark = pytest.mark.unit
TIMING = ("seconds", "loss_curve", "epoch_seconds", "target_reached_seconds")

# ---------------------------------------------------------------------------------------------
# The scorer


@pytest.mark.parametrize(
    ("tags", "chunks"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["O", "I-PER", "I-PER"], [("PER", 1, 2)]),  # conlleval: an I- after O starts a chunk
        (["I-ORG"], [("ORG", 0, 0)]),  # ... and so does an I- at the start
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change ends one
        (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),  # B- after B- of one type
        (["O", "O", "B-MISC"], [("MISC", 2, 2)]),  # a chunk at the end is closed
        (["O", "O"], []),
    ],
)
def test_entities_follow_conlleval_chunk_rules(tags, chunks):
    assert entities(tags) == chunks


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["I-ORG"]]
    # Gold PER(0-1) LOC(3) ORG; predicted PER(0) LOC(3) ORG (I- after the sentence start): 2 of 3 right.
    assert tagging_metrics(gold, predicted) == pytest.approx(
        {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "accuracy": 3 / 5}
    )
    # Precision and recall differ: one extra predicted entity; a type mismatch is wrong.
    gold = [["B-PER", "O", "B-LOC", "O"]]
    predicted = [["B-PER", "B-ORG", "B-MISC", "O"]]
    assert tagging_metrics(gold, predicted) == pytest.approx(
        {
            "f1": 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2),
            "precision": 1 / 3,
            "recall": 1 / 2,
            "accuracy": 2 / 4,
        }
    )
    # Nothing predicted: 0, not a division by zero.
    assert tagging_metrics([["B-PER"]], [["O"]]) == {
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "accuracy": 0.0,
    }


def test_chunks_do_not_cross_sentences():
    # One PER in each sentence, not one spanning both; the second sentence's I-PER starts a chunk.
    assert tagging_metrics([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["I-PER", "O"]])["f1"] == 1.0
    assert tagging_metrics([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["O", "O"]]) == pytest.approx(
        {"f1": 2 / 3, "precision": 1.0, "recall": 0.5, "accuracy": 3 / 4}
    )


def test_scores_match_seqeval_when_installed():
    """seqeval is not a dependency; where it is installed, random sequences must score identically."""
    metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC", "E-PER", "S-LOC", "NN", "X"]
    for _ in range(300):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 3))]
        predicted = [[rng.choice(tags) if rng.random() < 0.5 else t for t in s] for s in gold]
        ours = tagging_metrics(gold, predicted)
        for name in ("f1", "precision", "recall", "accuracy"):
            assert ours[name] == pytest.approx(getattr(metrics, f"{name}_score")(gold, predicted), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Data


def test_iob1_to_bio():
    assert to_bio(("I-ORG", "O", "I-MISC", "I-MISC", "O")) == ("B-ORG", "O", "B-MISC", "I-MISC", "O")
    # IOB1's B- marks a second adjacent chunk of one type; a type change begins a chunk too.
    assert to_bio(("I-PER", "B-PER", "I-PER", "I-LOC")) == ("B-PER", "B-PER", "I-PER", "B-LOC")
    assert to_bio(("B-PER", "I-PER", "O", "NN")) == ("B-PER", "I-PER", "O", "NN")  # BIO stays BIO


CONLL = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
broken line
-DOCSTART- -X- O O
BRUSSELS NNP I-NP I-LOC
1996-08-22 CD I-NP O
"""


def config_for(tmp_path: Path, **fields) -> TokenClassificationConfig:
    return TokenClassificationConfig(train_path=str(tmp_path / "train.txt"), **fields)


def test_conll_reading_skips_docstart_and_lists_bad_lines(tmp_path):
    (tmp_path / "train.txt").write_text(CONLL)
    (tmp_path / "dev.txt").write_text("Paris X X I-LOC\nEU X X I-ORG\r\n\n")
    config = config_for(tmp_path, dev_path=str(tmp_path / "dev.txt"))
    data = load_task_data(config, None, "k")
    assert [s.words for s in data.train] == [("EU", "rejects", "German", "call"), ("BRUSSELS", "1996-08-22")]
    assert data.train[0].tags == ("B-ORG", "O", "B-MISC", "O") and data.schemes == {
        "train": "iob1",
        "dev": "iob1",
    }
    # The broken line's whole sentence is left out (a missing word would shift its tags).
    assert data.skipped["train"] == [
        f"{tmp_path / 'train.txt'}:10: expected 4 fields, found 2; sentence left out"
    ]
    assert data.labels == ["O", "B-LOC", "B-MISC", "B-ORG"]  # "O" first, then sorted
    assert data.dev[0].tags == ("B-LOC", "B-ORG") and data.dev[0].where(1) == f"{tmp_path / 'dev.txt'}:2"
    # A dev tag outside the train tag set names itself and its line.
    (tmp_path / "dev.txt").write_text("Paris X X I-LOC\n\nParis X X I-GPE\n")
    with pytest.raises(DataError, match=r"dev tag 'B-GPE' at .*dev\.txt:3 is not in the tag set"):
        load_task_data(config, None, "k")


def test_conll_columns_scheme_and_errors(tmp_path):
    (tmp_path / "train.txt").write_text("EU I-NP I-ORG\nrejects I-VP O\n\nThe I-NP O\n")
    chunks = load_task_data(config_for(tmp_path, conll_tag_column=1, dev_fraction=0.5), None, "k")
    assert sorted(t for s in chunks.train + chunks.dev for t in s.tags) == ["B-NP", "B-NP", "B-VP"]
    kept = load_task_data(config_for(tmp_path, scheme="bio", dev_fraction=0.5), None, "k")
    assert "I-ORG" in kept.labels and kept.schemes["train"] == "bio"
    with pytest.raises(ConfigError, match=r"conll_tag_column: column 5 is out of range .* 3 fields"):
        load_task_data(config_for(tmp_path, conll_tag_column=5), None, "k")
    (tmp_path / "train.txt").write_text("-DOCSTART- O\nEU I-ORG\nrejects\n\n")
    with pytest.raises(DataError, match=r"train\.txt holds no usable sentence .*expected 2 fields"):
        load_task_data(config_for(tmp_path), None, "k")


def test_tables_with_token_and_tag_lists(tmp_path):
    rows = [
        {"words": ["EU", "rejects", "German"], "ner": ["B-ORG", "O", "B-MISC"]},
        {"words": "Peter Blackburn", "ner": '["B-PER", "I-PER"]'},  # whitespace words, a JSON list
        {"words": ["a", "b"], "ner": ["O"]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TokenClassificationConfig(
        train_path=str(tmp_path / "train.jsonl"), columns={"tokens": "words", "tags": "ner"}, dev_fraction=0.5
    )
    data = load_task_data(config, None, "k")
    assert len(data.train) + len(data.dev) == 2 and data.schemes["train"] == "bio"
    assert data.skipped["train"] == [f"{tmp_path / 'train.jsonl'}:3: 2 tokens but 1 tags"]
    (tmp_path / "ints.jsonl").write_text(
        '{"tokens": ["EU", "x"], "tags": [1, 0]}\n{"tokens": ["y"], "tags": [0]}\n'
    )
    ints = config.model_copy(
        update={"train_path": str(tmp_path / "ints.jsonl"), "columns": {"tokens": "tokens", "tags": "tags"}}
    )
    with pytest.raises(DataError, match="integer tags .* set `labels`"):
        load_task_data(ints, None, "k")
    data = load_task_data(ints.model_copy(update={"labels": ["O", "B-ORG"]}), None, "k")
    assert sorted(s.tags for s in data.train + data.dev) == [("B-ORG", "O"), ("O",)]


def test_hub_tag_classes_name_integer_tags(monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )
    splits = {
        "train": {"tokens": [["Peter", "Blackburn"], ["hi"]], "ner_tags": [[1, 2], [0]]},
        "validation": {"tokens": [["Sue", "ran"]], "ner_tags": [[1, 0]]},
    }
    loaded = []

    def fake_load(hub):
        loaded.append((hub.dataset, hub.split))
        return datasets.Dataset.from_dict(splits[hub.split], features=features)

    monkeypatch.setattr("lmforge.tasks.token_classification.load_hub_split", fake_load)
    config = TokenClassificationConfig(
        train_path="hf://eriktks/conll2003?split=train",
        dev_path="hf://eriktks/conll2003?split=validation",
        columns={"tags": "ner_tags"},
    )
    data = load_task_data(config, None, "k")
    assert data.train[0].tags == ("B-PER", "I-PER") and data.dev[0].tags == ("B-PER", "O")
    assert data.labels == ["O", "B-PER", "I-PER"] and data.dev_source == config.dev_path
    assert data.dev[0].where(0) == "hf://eriktks/conll2003?split=validation row 1"
    assert loaded == [("eriktks/conll2003", "train"), ("eriktks/conll2003", "validation")]


# ---------------------------------------------------------------------------------------------
# Alignment


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), with_pad=False)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def test_words_encode_as_in_running_text(gpt2_dir, bert_dir):
    words = ("the", "film", "is", "superb")
    for model_dir in (gpt2_dir, bert_dir):
        tokenizer = load_tokenizer(model_dir)
        (pieces,) = word_pieces(tokenizer, [words])
        # Byte-level BPE: later words carry their space ("Ġfilm"), the first none: as in the sentence.
        joined = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        assert [i for word in pieces for i in word] == joined
    gpt2 = load_tokenizer(gpt2_dir)
    (pieces,) = word_pieces(gpt2, [words])
    assert gpt2.convert_ids_to_tokens(pieces[1])[0].startswith("Ġ")
    assert not gpt2.convert_ids_to_tokens(pieces[0])[0].startswith("Ġ")


def test_truncation_counts_specials_and_keeps_first_sub_tokens():
    pieces = [[5, 6], [7], [8, 9, 10], [11]]
    encoded = encode(pieces, [1], [2], 6)  # room for 4 sub-tokens: words 1-2 whole, word 3 cut
    assert encoded.ids == [1, 5, 6, 7, 8, 2] and encoded.positions == [1, 3, 4, None]


def test_a_bare_word_start_marker_is_not_the_tagged_sub_token(gpt2_dir):
    pieces = [[5, 6], [3, 7], [3], [3, 8, 9]]
    # 3 is a bare marker: the word [3, 7] is tagged on 7; a word that is only a marker on it.
    encoded = encode(pieces, [1], [2], 8, markers=frozenset({3}))
    assert encoded.ids == [1, 5, 6, 3, 7, 3, 3, 2] and encoded.positions == [1, 4, 5, 6]
    tokenizer = load_tokenizer(gpt2_dir)
    markers = bare_markers(tokenizer)
    assert tokenizer.convert_tokens_to_ids("Ġ") in markers
    assert all(not tokenizer.decode([i]).strip() for i in markers)
    assert (
        tokenizer.convert_tokens_to_ids("Ġthe") not in markers
        and not set(tokenizer.all_special_ids) & markers
    )


# ---------------------------------------------------------------------------------------------
# Runs, checked against Hugging Face's own token classifier


PEOPLE = [["critics"], ["the", "cast"], ["lobster"]]
PLACES = [["europe"], ["atlantic", "ocean"]]


def write_ner(path: Path, num_sentences: int, seed: int) -> None:
    """IOB1 CoNLL sentences: "<person> saw <place> ." with multi-word entities."""
    rng = random.Random(seed)
    blocks = ["-DOCSTART- -X- O O\n"]
    for _ in range(num_sentences):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        lines = [f"{w} X I-PER" for w in person] + ["saw X O"] + [f"{w} X I-LOC" for w in place] + [". X O"]
        blocks.append("\n".join(lines) + "\n")
    path.write_text("\n".join(blocks))


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ner")
    write_ner(path / "train.txt", 32, 0)
    write_ner(path / "dev.txt", 10, 1)
    return path


CONFIG = TokenClassificationConfig(
    train_path="train.txt",
    dev_path="dev.txt",
    epochs=3,
    batch_size=8,
    learning_rate=3e-3,
    probe_learning_rate=3e-2,
    max_length=32,
    save_model=True,
)


def run(config, cell, model_dir, init, data_dir, out, seed=0):
    return FINETUNE_TASKS[config.type].run(config, cell, model_dir, init, data_dir, out, seed)


def reference_ids(family: str, tokenizer, words) -> tuple[list[int], list[int]]:
    """The family's input, built independently: each word encoded alone, a space before later words
    for byte-level BPE (GPT-2); the first sub-token's position per word."""
    if family == "causal":
        prefix, suffix = [tokenizer.eos_token_id], []
    elif family == "encoder":
        prefix, suffix = [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    else:
        prefix, suffix = [], [tokenizer.eos_token_id]
    ids, firsts = list(prefix), []
    for index, word in enumerate(words):
        text = " " + word if family == "causal" and index else word
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        # The first piece that decodes to more than whitespace (a bare "Ġ" or "▁" is skipped).
        firsts.append(len(ids) + next((i for i, p in enumerate(pieces) if tokenizer.decode([p]).strip()), 0))
        ids += pieces
    return ids + suffix, firsts


def assert_metrics_match_saved_model(metrics, model_dir, data, family, max_length=None):
    """Dev metrics recomputed from the saved model, one unpadded sentence at a time; with
    max_length, the sub-tokens are cut to fit with the specials and words cut off predicted "O"."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    predicted, loss, scored = [], 0.0, 0
    with torch.no_grad():
        for sentence in data.dev:
            ids, firsts = reference_ids(family, tokenizer, sentence.words)
            suffix = ids[len(ids) - (0 if family == "causal" else 1) :]
            if max_length is not None:
                ids = ids[: max_length - len(suffix)] + suffix
            kept = [first < len(ids) - len(suffix) for first in firsts]
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            row = []
            for word, (first, inside) in enumerate(zip(firsts, kept, strict=True)):
                if not inside:
                    row.append("O")
                    continue
                row.append(model.config.id2label[int(logits[first].argmax())])
                gold = model.config.label2id[sentence.tags[word]]
                loss -= float(torch.log_softmax(logits[first], -1)[gold])
                scored += 1
            predicted.append(row)
    reference = tagging_metrics([list(s.tags) for s in data.dev], predicted)
    for name in ("f1", "precision", "recall", "accuracy"):
        assert metrics[f"dev_{name}"] == reference[name], name
    assert metrics["dev_loss"] == pytest.approx(loss / scored, rel=1e-5)
    return kept


@pytest.mark.parametrize(
    ("family", "fixture"), [("causal", "gpt2_dir"), ("encoder", "bert_dir"), ("seq2seq", "t5_dir")]
)
def test_finetune_each_paradigm_matches_hf_token_classifier(family, fixture, ner_dir, tmp_path, request):
    model_dir = request.getfixturevalue(fixture)
    metrics = run(CONFIG, Cell("finetune", 24, 0), model_dir, "pretrained", ner_dir, tmp_path)
    assert metrics["model_family"] == family and metrics["primary_metric"] == "f1"
    assert metrics["train_size"] == 24 and metrics["num_steps"] == 3 * 3 == len(metrics["loss_curve"])
    assert (
        metrics["labels"] == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
        and metrics["scheme"]["train"] == "iob1"
    )
    assert metrics["truncated_words"] == {"train": 0, "dev": 0} and metrics["dev_source"] == "dev.txt"
    assert metrics["trainable_parameters"] == metrics["num_parameters"]
    assert metrics["final_train_loss"] < metrics["initial_train_loss"]
    data = load_task_data(CONFIG, ner_dir, "k")
    assert_metrics_match_saved_model(metrics, tmp_path / "model", data, family)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == {k: v for k, v in metrics.items() if k not in TIMING}
    assert str(tmp_path) not in json.dumps(saved) and str(ner_dir) not in json.dumps(saved)
    telemetry = json.loads((tmp_path / "telemetry" / "timings.json").read_text())
    assert len(telemetry["epoch_seconds"]) == 3


def test_bert_learns_the_toy_task(bert_dir, ner_dir, tmp_path):
    config = CONFIG.model_copy(update={"epochs": 8, "save_model": False})
    metrics = run(config, Cell("finetune", None, 0), bert_dir, "pretrained", ner_dir, tmp_path)
    assert metrics["dev_f1"] > 0.5 and metrics["dev_accuracy"] > 0.8


def test_linear_probe_trains_one_linear_on_a_frozen_body(gpt2_dir, ner_dir, tmp_path):
    from safetensors.torch import load_file

    from lmforge.tasks.token_classification import build_tagger

    metrics = run(CONFIG, Cell("linear_probe", 24, 0), gpt2_dir, "random", ner_dir, tmp_path)
    assert metrics["trainable_parameters"] == 32 * 5 + 5 and metrics["init"] == "random"
    saved = load_file(tmp_path / "model" / "model.safetensors")
    # The random body, re-created from the same seed, is what the probe saved: only the head moved.
    fresh = build_tagger(gpt2_dir, "causal", "random", metrics["labels"], "linear_probe", 0, 32).model
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(saved[name], tensor) != name.startswith("classifier."), name
    assert_metrics_match_saved_model(
        metrics, tmp_path / "model", load_task_data(CONFIG, ner_dir, "k"), "causal"
    )


def test_truncated_words_are_predicted_outside(bert_dir, ner_dir, tmp_path):
    config = CONFIG.model_copy(update={"max_length": 5, "epochs": 1})
    metrics = run(config, Cell("finetune", 8, 0), bert_dir, "pretrained", ner_dir, tmp_path)
    data = load_task_data(config, ner_dir, "k")
    cut = 0
    for sentence in data.dev:
        sub_tokens = [len(p) for p in word_pieces(load_tokenizer(bert_dir), [sentence.words])[0]]
        cut += sum(sum(sub_tokens[:word]) >= 5 - 2 for word in range(len(sub_tokens)))
    assert metrics["truncated_words"]["dev"] == cut > 0
    assert_metrics_match_saved_model(metrics, tmp_path / "model", data, "encoder", max_length=5)


def test_metrics_file_is_identical_on_a_rerun(gpt2_dir, ner_dir, tmp_path):
    config = CONFIG.model_copy(update={"epochs": 1, "save_model": False})
    for name in ("a", "b"):
        run(config, Cell("finetune", 16, 1), gpt2_dir, "random", ner_dir, tmp_path / name, seed=1)
    for file in ("metrics.json", "loss_curve.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


@pytest.mark.skipif(not os.environ.get("LMFORGE_DATA_DIR"), reason="LMFORGE_DATA_DIR is not set")
def test_real_conll2003_validation_file():
    config = TokenClassificationConfig(train_path="conll2003/valid.txt", dev_fraction=0.1)
    data = load_task_data(config, Path(os.environ["LMFORGE_DATA_DIR"]), "k")
    assert len(data.train) + len(data.dev) == 3250 and data.skipped == {"train": []}
    assert data.schemes == {"train": "iob1"} and data.labels[0] == "O" and len(data.labels) == 9
    assert sum(len(s.words) for s in data.train + data.dev) == 51362  # lines, less -DOCSTART- and blank ones


def test_comment_lines_are_skipped(tmp_path):
    """CoNLL-U / MultiCoNER files put `# id = ...` lines before sentences; a `#` word line stays."""
    from lmforge.tasks.config import TokenClassificationConfig
    from lmforge.tasks.token_classification import parse_conll

    text = "# id = 1\nEU B-ORG\nrejects O\n# O\n\n# id = 2 domain = x\nPeter B-PER\n"
    config = TokenClassificationConfig(train_path="x.conll")
    sentences, skipped = parse_conll(text, "x.conll", config, "k")
    assert [s.words for s in sentences] == [("EU", "rejects", "#"), ("Peter",)] and skipped == []
