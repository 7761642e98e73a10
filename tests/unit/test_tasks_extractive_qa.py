"""Extractive QA (SQuAD v1.1): the official metric on hand examples, windows against Hugging Face's
own overflowing tokenization, and dev scores checked against the saved model run one window at a
time through `AutoModelForQuestionAnswering`, with a brute-force span search."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks import FINETUNE_TASKS, FinetuneConfig
from lmforge.tasks.config import Cell, ExtractiveQaConfig
from lmforge.tasks.extractive_qa import (
    HEAD_PARAMETERS,
    N_BEST,
    Window,
    best_answer,
    build_reader,
    exact_match_score,
    f1_score,
    layout_for,
    load_qa_data,
    make_windows,
    normalize_answer,
    run_extractive_qa,
    squad_scores,
)
from lmforge.tasks.finetune import new_parameter_names
from lmforge.tasks.modeling import load_tokenizer
from tests.unit.test_tasks_support import NEGATIVE, POSITIVE, build_tiny_bert, build_tiny_gpt2
from tests.unit.test_tasks_t5_support import build_tiny_t5

pytestmark = pytest.mark.unit
WORDS = ["lobster", "ocean", "critics", "comedy", "warmth", "story", "cast", "plot"]
QUESTION = "which film ?"
# Windows of at most N_BEST tokens: every (start, end) pair is an n-best candidate, so a brute-force
# search over all pairs is an independent reference for the prediction.
SMALL = {"max_length": N_BEST, "doc_stride": 4, "max_answer_length": 3, "batch_size": 8}


def squad_document(num_articles: int, per_article: int = 3) -> dict:
    """SQuAD v1.1 JSON whose answer follows "the best film is" somewhere in a longer context; the
    second reference answer is the answer with its article."""
    articles = []
    for a in range(num_articles):
        paragraphs = []
        for p in range(per_article):
            word = WORDS[(a * per_article + p) % len(WORDS)]
            before = POSITIVE[(a + p) % len(POSITIVE)]
            after = NEGATIVE[(a + 2 * p) % len(NEGATIVE)]
            context = f"{before} . the best film is the {word} . {after} ."
            start = context.index(f"is the {word}") + len("is the ")
            qa = {
                "id": f"q{a}-{p}",
                "question": QUESTION,
                "answers": [
                    {"text": word, "answer_start": start},
                    {"text": f"the {word}", "answer_start": start - 4},
                ],
            }
            paragraphs.append({"context": context, "qas": [qa]})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    return {"data": articles, "version": "1.1"}


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("squad") / "train-v1.1.json"
    path.write_text(json.dumps(squad_document(8)))
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), with_pad=False)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def qa_config(squad_file: Path, **overrides) -> ExtractiveQaConfig:
    fields = {"train_path": str(squad_file), "dev_fraction": 0.25, "epochs": 2, "learning_rate": 3e-3}
    return ExtractiveQaConfig(**{**fields, **SMALL, **overrides})


# ---------------------------------------------------------------------------------------------
# The official metric


def test_normalization_and_scores_follow_the_official_script():
    assert normalize_answer("The Cat.") == "cat"
    assert normalize_answer("  An  apple,  a day ") == "apple day"
    assert normalize_answer("another theme") == "another theme"  # articles only as whole words
    assert normalize_answer("U.S. Open") == "us open"  # punctuation removed inside words
    assert exact_match_score("The Cat.", "cat") == 1.0
    assert exact_match_score("cats", "cat") == 0.0
    # "the cat sat" vs "a cat sat down": 2 common tokens, precision 1, recall 2/3.
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1_score("Denver Broncos", "the Carolina Panthers") == 0.0
    # Repeated tokens count with multiplicity: "a b b" vs "b b c" -> tokens [b, b] vs [b, b, c].
    assert f1_score("x b b", "b b c") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    # Both normalize to "": exact match, yet no common token, so F1 0 (the official script's result).
    assert exact_match_score("the", "a") == 1.0 and f1_score("the", "a") == 0.0
    scores = squad_scores(
        ["Denver Broncos", "the cat sat", ""],
        [("Denver Broncos", "Broncos"), ("a cat sat down", "dog"), ("anything",)],
    )
    assert scores["exact_match"] == pytest.approx(1 / 3)  # fractions, not percentages
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_best_answer_respects_context_order_and_length():
    context = "abcdefghij"
    window = Window(0, [0] * 6, [], [None, (0, 2), (2, 4), (4, 6), (6, 8), None], 0, 0)
    starts = [9.0, 1.0, 3.0, 0.0, 0.0, 9.0]
    ends = [9.0, 0.0, 0.0, 0.0, 5.0, 9.0]
    # Non-context positions (0 and 5) are never chosen; start 2 .. end 4 is 3 tokens.
    assert best_answer(context, [(window, starts, ends)], 3) == "cdefgh"
    # At most 2 tokens: start 3 .. end 4 (0 + 5) beats start 2 .. end 3 (3 + 0); start 4 .. end 4
    # ties it later in the n-best order, and a tie keeps the first.
    assert best_answer(context, [(window, starts, ends)], 2) == "efgh"
    # End before start is never a span: start 4 with end 1 would score 10.
    assert best_answer(context, [(window, [0, 0, 0, 0, 5.0, 0], [0, 5.0, 0, 0, 0, 0])], 5) == "gh"
    other = Window(0, [0] * 3, [], [None, (8, 10), None], 0, 0)
    assert best_answer(context, [(window, starts, ends), (other, [0, 20.0, 0], [0, 20.0, 0])], 3) == "ij"
    assert best_answer(context, [(Window(0, [0], [], [None], 0, 0), [1.0], [1.0])], 3) == ""


# ---------------------------------------------------------------------------------------------
# Data


def test_reads_squad_json_and_carves_whole_articles(squad_file):
    config = qa_config(squad_file)
    data = load_qa_data(config, None, "k")
    assert len(data.train) + len(data.dev) == 24 and len(data.dev) == 2 * 3  # 2 of the 8 articles
    assert {e.group for e in data.train}.isdisjoint({e.group for e in data.dev})
    assert {e.context for e in data.train}.isdisjoint({e.context for e in data.dev})
    assert "seeded 0.25 of its 8 articles (by title; split_seed 0)" in data.dev_source
    assert data.dev_source.startswith(str(squad_file))
    first = data.train[0]
    assert first.context[first.answer_start : first.answer_end] == first.references[0]
    assert len(first.references) == 2 and data.skipped == {"train": []}
    again = load_qa_data(config.model_copy(update={"max_dev_examples": 4}), None, "k")
    assert len(again.dev) == 4 and set(again.dev) <= set(data.dev)
    other_seed = load_qa_data(config.model_copy(update={"split_seed": 3}), None, "k")
    assert {e.group for e in other_seed.dev} != {e.group for e in data.dev}


def test_misplaced_answers_are_realigned_or_skipped_never_fatal(tmp_path):
    document = squad_document(2, per_article=2)
    qas = [p["qas"][0] for article in document["data"] for p in article["paragraphs"]]
    qas[0]["answers"] = [
        {"text": qas[0]["answers"][0]["text"], "answer_start": qas[0]["answers"][0]["answer_start"] + 3}
    ]
    qas[1]["answers"] = [{"text": "not in the context", "answer_start": 5}]
    qas[2]["question"] = "  "
    (tmp_path / "d.json").write_text(json.dumps(document))
    config = ExtractiveQaConfig(train_path="d.json", dev_path="d.json", max_length=24, doc_stride=4)
    data = load_qa_data(config, tmp_path, "k")
    assert data.realigned == {"train": 1, "dev": 1}
    assert len(data.train) == 2 and data.train[0].id == "q0-0"
    assert data.train[0].context[data.train[0].answer_start :].startswith(data.train[0].references[0])
    notes = data.skipped["train"]
    assert len(notes) == 2
    assert notes[0].endswith("(id q1-0): empty question")
    # Named by the config's path string (not the resolved file) and the question id.
    assert notes[1] == (
        "d.json data[0].paragraphs[1].qas[0] (id q0-1): answer 'not in the context' not found at "
        "answer_start 5 nor near it (no training target)"
    )
    # The dev set keeps the question whose answer is not in its context: the official script scores
    # it (by the references' texts), so leaving it out would inflate the scores.
    assert [e.id for e in data.dev] == ["q0-0", "q0-1", "q1-1"]
    assert [e.located for e in data.dev] == [True, False, True]
    assert data.skipped["dev"] == [notes[0]]
    assert data.dev_source == "d.json"


def test_tables_jsonl_and_parquet_with_hub_style_answers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for article in squad_document(3)["data"]:
        for paragraph in article["paragraphs"]:
            qa = paragraph["qas"][0]
            answers = qa["answers"]
            rows.append(
                {
                    "id": qa["id"],
                    "title": article["title"],
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {
                        "text": [a["text"] for a in answers],
                        "answer_start": [a["answer_start"] for a in answers],
                    },
                }
            )
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\nnot json\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.parquet"):
        config = ExtractiveQaConfig(train_path=name, dev_fraction=0.34, max_length=24, doc_stride=4)
        data = load_qa_data(config, tmp_path, "k")
        assert len(data.train) == 6 and len(data.dev) == 3 and len({e.group for e in data.dev}) == 1
        assert all(len(e.references) == 2 and e.references[1] == f"the {e.references[0]}" for e in data.train)
        assert data.skipped["train"] == (
            ["t.jsonl:10: not valid JSON (Expecting value at column 1)"] if name == "t.jsonl" else []
        )
    # Without a title column a carved dev set keeps each context whole; without ids rows are named.
    bare = [{k: v for k, v in row.items() if k not in ("title", "id")} for row in rows]
    (tmp_path / "bare.jsonl").write_text("\n".join(json.dumps(row) for row in bare) + "\n")
    data = load_qa_data(
        ExtractiveQaConfig(train_path="bare.jsonl", max_length=24, doc_stride=4), tmp_path, "k"
    )
    assert data.dev[0].group.startswith("context: ") and data.dev[0].id.startswith("bare.jsonl:")
    assert "by title, or by context without one" in data.dev_source
    renamed = ExtractiveQaConfig(
        train_path="bare.jsonl", columns={"question": "query"}, max_length=24, doc_stride=4
    )
    with pytest.raises(DataError, match="column 'query' not found"):
        load_qa_data(renamed, tmp_path, "k")
    with pytest.raises(DataError, match="not SQuAD JSON"):
        load_qa_data(renamed.model_copy(update={"format": "squad"}), tmp_path, "k")


def test_config_rejects_strides_that_cannot_advance_and_unknown_columns():
    base = {"type": "extractive_qa", "train_path": "x.json"}
    with pytest.raises(ConfigError, match="doc_stride"):
        validate_config(FinetuneConfig, {"tasks": [{**base, "max_length": 64, "doc_stride": 32}]})
    with pytest.raises(ConfigError, match="unknown role"):
        validate_config(FinetuneConfig, {"tasks": [{**base, "columns": {"answer": "a"}}]})
    assert FINETUNE_TASKS["extractive_qa"].run is run_extractive_qa


@pytest.mark.skipif(not os.environ.get("LMFORGE_DATA_DIR"), reason="LMFORGE_DATA_DIR is not set")
def test_real_squad_dev_carves_by_title():
    config = ExtractiveQaConfig(train_path="squad_v1.1/dev-v1.1.json", dev_fraction=0.2)
    data = load_qa_data(config, Path(os.environ["LMFORGE_DATA_DIR"]), "k")
    assert len(data.train) + len(data.dev) == 10570 and data.skipped == {"train": []}
    assert len({e.group for e in data.dev}) == 10 and len({e.group for e in data.train}) == 38
    assert {e.context for e in data.train}.isdisjoint({e.context for e in data.dev})
    assert data.realigned == {"train": 0}


# ---------------------------------------------------------------------------------------------
# Windows


def test_bert_windows_are_hugging_faces_overflowing_windows(bert_dir, squad_file):
    tokenizer = load_tokenizer(bert_dir)
    examples = load_qa_data(qa_config(squad_file), None, "k").train
    windows, truncated = make_windows(examples, tokenizer, layout_for("encoder", tokenizer, bert_dir), 20, 4)
    assert truncated == 0
    by_example: dict[int, list[Window]] = {}
    for window in windows:
        by_example.setdefault(window.example, []).append(window)
    with_answer = 0
    for index, example in enumerate(examples):
        reference = tokenizer(
            example.question,
            example.context,
            truncation="only_second",
            max_length=20,
            stride=4,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        ours = by_example[index]
        assert [w.input_ids for w in ours] == reference["input_ids"]
        for k, window in enumerate(ours):
            sequence_ids = reference.sequence_ids(k)
            expected = [
                tuple(o) if s == 1 else None
                for o, s in zip(reference["offset_mapping"][k], sequence_ids, strict=True)
            ]
            assert window.offsets == expected
            # Segment ids: 0 through the first [SEP], 1 for the context and the last [SEP].
            first_context = sequence_ids.index(1)
            assert window.token_type_ids == [0] * first_context + [1] * (len(sequence_ids) - first_context)
            if window.start_position == 0:
                inside = [o for o in expected if o is not None]
                assert not (inside[0][0] <= example.answer_start and inside[-1][1] >= example.answer_end)
                continue
            with_answer += 1
            first, last = expected[window.start_position], expected[window.end_position]
            assert example.context[first[0] : last[1]] == example.references[0]
    assert with_answer >= len(examples)  # every answer lies whole in at least one window


def test_gpt2_windows_put_the_question_first_and_overlap(gpt2_dir, squad_file):
    tokenizer = load_tokenizer(gpt2_dir)
    examples = load_qa_data(qa_config(squad_file), None, "k").train[:4]
    layout = layout_for("causal", tokenizer, gpt2_dir)
    windows, _ = make_windows(examples, tokenizer, layout, 20, 4)
    eos = tokenizer.eos_token_id
    assert layout.description == "<|endoftext|> question <|endoftext|> context"
    question = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    for index, example in enumerate(examples):
        ours = [w for w in windows if w.example == index]
        context_ids = tokenizer(example.context, add_special_tokens=False)["input_ids"]
        pieces = []
        for window in ours:
            assert window.input_ids[: len(question) + 2] == [eos, *question, eos]
            pieces.append(window.input_ids[len(question) + 2 :])
            assert len(window.input_ids) <= 20
        joined = pieces[0] + [t for piece in pieces[1:] for t in piece[4:]]  # doc_stride 4 overlap
        assert joined == context_ids
        found = [w for w in ours if w.start_position]
        assert found and all(
            example.context[w.offsets[w.start_position][0] : w.offsets[w.end_position][1]].strip()
            == example.references[0]
            for w in found
        )


# ---------------------------------------------------------------------------------------------
# Heads and runs


def run(config, strategy, model_dir, init, out, seed=0):
    return FINETUNE_TASKS[config.type].run(config, Cell(strategy, None, 0), model_dir, init, None, out, seed)


def reference_scores(model_dir: Path, examples, windows_of, max_answer_length, brute_force=True):
    """The saved model through HF's own forward, one unpadded window at a time (its own loss), and
    the best span by brute force over every pair of context tokens (windows of at most N_BEST
    tokens), or else by `best_answer` on those logits."""
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    predictions, loss_sum, count = [], 0.0, 0
    with torch.no_grad():
        for index, example in enumerate(examples):
            best, best_score, scored = "", float("-inf"), []
            for window in windows_of(index):
                inputs = {"input_ids": torch.tensor([window.input_ids])}
                if window.token_type_ids:
                    inputs["token_type_ids"] = torch.tensor([window.token_type_ids])
                out = model(
                    **inputs,
                    start_positions=torch.tensor([window.start_position]),
                    end_positions=torch.tensor([window.end_position]),
                )
                loss_sum, count = loss_sum + float(out.loss), count + 1
                starts, ends = out.start_logits[0].tolist(), out.end_logits[0].tolist()
                scored.append((window, starts, ends))
                context_tokens = [i for i, o in enumerate(window.offsets) if o is not None]
                for s in context_tokens:
                    for e in context_tokens:
                        if s <= e < s + max_answer_length and starts[s] + ends[e] > best_score:
                            best_score = starts[s] + ends[e]
                            best = example.context[window.offsets[s][0] : window.offsets[e][1]].strip()
            predictions.append(
                best if brute_force else best_answer(example.context, scored, max_answer_length)
            )
    return predictions, loss_sum / count


def assert_matches_reference(metrics, out, config, model_dir, family):
    data = load_qa_data(config, None, "k")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    windows, _ = make_windows(
        data.dev, tokenizer, layout_for(family, tokenizer, model_dir), config.max_length, config.doc_stride
    )
    by_example = lambda i: [w for w in windows if w.example == i]  # noqa: E731
    brute_force = max(len(w.input_ids) for w in windows) <= N_BEST
    predictions, loss = reference_scores(
        out / "model", data.dev, by_example, config.max_answer_length, brute_force
    )
    saved = json.loads((out / "dev_predictions.json").read_text())
    assert saved == {e.id: p for e, p in zip(data.dev, predictions, strict=True)}
    scores = squad_scores(predictions, [e.references for e in data.dev])
    assert metrics["dev_f1"] == pytest.approx(scores["f1"], abs=1e-12)
    assert metrics["dev_exact_match"] == pytest.approx(scores["exact_match"], abs=1e-12)
    assert metrics["dev_loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["dev_windows"] == len(windows)


def test_bert_finetune_matches_hf_reference_and_writes_a_content_file(bert_dir, squad_file, tmp_path):
    config = qa_config(squad_file, epochs=3, save_model=True, eval_every_epoch=True)
    metrics = run(config, "finetune", bert_dir, "pretrained", tmp_path)
    assert (
        metrics["model_family"] == "encoder"
        and metrics["input_format"] == "[CLS] question [SEP] context [SEP]"
    )
    assert metrics["primary_metric"] == "f1" and metrics["train_size"] == 18 and metrics["dev_size"] == 6
    assert metrics["train_windows"] > metrics["train_size"]  # contexts longer than a window
    assert metrics["trainable_parameters"] == metrics["num_parameters"]
    assert metrics["final_train_loss"] < metrics["initial_train_loss"] - 0.3
    assert [row["epoch"] for row in metrics["epoch_metrics"]] == [1, 2, 3]
    assert metrics["skipped_rows"] == {"train": 0} and metrics["requested_train_size"] == "all"
    assert metrics["unlocated_dev_answers"] == 0
    assert_matches_reference(metrics, tmp_path, config, bert_dir, "encoder")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    timing = ("seconds", "loss_curve", "epoch_seconds", "target_reached_seconds")
    assert saved == {k: v for k, v in metrics.items() if k not in timing}
    assert str(tmp_path) not in json.dumps(saved).replace(str(squad_file), "")


def test_gpt2_finetune_matches_hf_reference_and_reruns_identically(gpt2_dir, squad_file, tmp_path):
    config = qa_config(squad_file, epochs=1, save_model=True)
    metrics = run(config, "finetune", gpt2_dir, "random", tmp_path / "a")
    assert metrics["model_family"] == "causal" and metrics["init"] == "random"
    assert_matches_reference(metrics, tmp_path / "a", config, gpt2_dir, "causal")
    run(config, "finetune", gpt2_dir, "random", tmp_path / "b")
    for name in ("metrics.json", "loss_curve.json", "dev_predictions.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_t5_uses_its_question_answering_head(t5_dir, squad_file, tmp_path):
    config = qa_config(squad_file, epochs=1, max_length=40, doc_stride=8, save_model=True)
    metrics = run(config, "finetune", t5_dir, "pretrained", tmp_path)
    assert metrics["model_family"] == "seq2seq"
    assert metrics["input_format"] == "question: question context: context </s>"
    assert_matches_reference(metrics, tmp_path, config, t5_dir, "seq2seq")


def test_linear_probe_trains_only_the_span_layer(gpt2_dir, squad_file, tmp_path):
    from safetensors.torch import load_file

    config = qa_config(squad_file, epochs=1, save_model=True)
    metrics = run(config, "linear_probe", gpt2_dir, "pretrained", tmp_path)
    assert metrics["trainable_parameters"] == 32 * 2 + 2
    before, after = (
        load_file(gpt2_dir / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    assert set(after) - set(before) == HEAD_PARAMETERS
    for name, tensor in before.items():
        if name in after:
            assert torch.equal(after[name], tensor), name
    assert_matches_reference(metrics, tmp_path, config, gpt2_dir, "causal")


@pytest.mark.parametrize("family", ["encoder", "causal", "seq2seq"])
def test_the_span_layer_is_the_only_new_weight(family, bert_dir, gpt2_dir, t5_dir):
    """What a probe trains is exactly what AutoModelForQuestionAnswering adds to each export."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    model_dir = {"encoder": bert_dir, "causal": gpt2_dir, "seq2seq": t5_dir}[family]
    assert (
        new_parameter_names(AutoModelForQuestionAnswering, model_dir, AutoConfig.from_pretrained(model_dir))
        == HEAD_PARAMETERS
    )
    reader, trainable = build_reader(model_dir, family, "random", "linear_probe", 0, seed=0)
    hidden = reader.model.qa_outputs.in_features
    assert trainable == 2 * hidden + 2 and reader.frozen
    assert {n for n, p in reader.model.named_parameters() if p.requires_grad} == HEAD_PARAMETERS
