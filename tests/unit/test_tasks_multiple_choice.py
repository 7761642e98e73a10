"""Multiple choice per paradigm (BERT's multiple-choice head, GPT-1's per-option transforms with the
auxiliary LM loss, T5 option likelihoods), linear probes and data handling; dev metrics checked
against the saved model run one option at a time through Hugging Face's own classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks import FINETUNE_TASKS, FinetuneConfig
from lmforge.tasks.classification import DELIM, EXTRACT, START
from lmforge.tasks.config import Cell, MultipleChoiceConfig
from lmforge.tasks.modeling import load_tokenizer
from lmforge.tasks.multiple_choice import PROBE_HEAD_FILE, causal_head, choice_metrics, load_choice_data
from tests.unit.test_tasks_support import NEGATIVE, POSITIVE, build_tiny_bert, build_tiny_gpt2
from tests.unit.test_tasks_t5_support import build_tiny_t5

pytestmark = pytest.mark.unit
PIQA = {"context": "goal", "options": ["sol1", "sol2"]}
TIMING = ("seconds", "loss_curve", "epoch_seconds", "target_reached_seconds")


def piqa_config(data_dir: Path, **overrides) -> MultipleChoiceConfig:
    settings = {
        "train_path": str(data_dir / "valid.jsonl"),
        "train_labels_path": str(data_dir / "valid-labels.lst"),
        "columns": PIQA,
        "dev_fraction": 0.25,
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "max_length": 40,
        "save_model": True,
        **overrides,
    }
    return MultipleChoiceConfig(**settings)


def sentiment_questions(num_rows: int) -> list[tuple[str, list[str], int]]:
    """A review and its sentiment word among two options, in both orders."""
    rows = []
    for index in range(num_rows):
        positive = index % 2 == 0
        text = (POSITIVE if positive else NEGATIVE)[(index // 2) % len(POSITIVE)]
        options = ["positive", "negative"] if (index // 3) % 2 == 0 else ["negative", "positive"]
        rows.append((text, options, options.index("positive" if positive else "negative")))
    return rows


def write_piqa(data_dir: Path, rows, extra_lines: tuple[str, ...] = ()) -> Path:
    """PIQA's layout: valid.jsonl (goal, sol1, sol2) and the line-aligned valid-labels.lst."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"goal": goal, "sol1": options[0], "sol2": options[1]}) for goal, options, _ in rows]
    (data_dir / "valid.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    labels = [str(label) for *_, label in rows] + ["0"] * len(extra_lines)
    (data_dir / "valid-labels.lst").write_text("\n".join(labels) + "\n")
    return data_dir


def run(config, cell, model_dir, init, data_dir, out, seed=0):
    return FINETUNE_TASKS[config.type].run(config, cell, model_dir, init, data_dir, out, seed)


@pytest.fixture(scope="module")
def piqa_dir(tmp_path_factory):
    return write_piqa(tmp_path_factory.mktemp("piqa"), sentiment_questions(48))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), with_pad=False)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def gpt1_ids(tokenizer, context: str, option: str) -> list[int]:
    token = tokenizer.convert_tokens_to_ids
    return [
        token(START),
        *ids_of(tokenizer, context),
        token(DELIM),
        *ids_of(tokenizer, option),
        token(EXTRACT),
    ]


def assert_metrics_match(metrics: dict, questions, option_score) -> None:
    """dev_accuracy and dev_loss recomputed from `option_score(context, option)`, one at a time."""
    gold = [q.label for q in questions]
    with torch.no_grad():
        scores = [torch.tensor([float(option_score(q.context, o)) for o in q.options]) for q in questions]
    correct = sum(int(row.argmax()) == label for row, label in zip(scores, gold, strict=True))
    loss = sum(-float(torch.log_softmax(row.double(), -1)[g]) for row, g in zip(scores, gold, strict=True))
    assert metrics["dev_accuracy"] == correct / len(gold)
    assert metrics["dev_loss"] == pytest.approx(loss / len(gold), rel=1e-4)


def test_gpt_finetune_scores_each_option_through_gpt1_transforms(gpt2_dir, piqa_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = piqa_config(piqa_dir)
    metrics = run(config, Cell("finetune", 32, 0), gpt2_dir, "pretrained", None, tmp_path)
    assert metrics["model_family"] == "causal" and metrics["num_options"] == 2
    assert metrics["input_format"] == f"{START} context {DELIM} option {EXTRACT}"
    assert metrics["train_size"] == 32 and metrics["dev_size"] == 12 and metrics["num_steps"] == 3 * 4
    assert metrics["dev_chance_accuracy"] == 0.5 and metrics["aux_lm_weight"] == 0.5
    assert metrics["final_train_loss"] < metrics["initial_train_loss"]
    assert metrics["dev_source"] == f"{piqa_dir / 'valid.jsonl'} (a seeded 0.25 of it, split_seed 0)"
    assert metrics["trainable_parameters"] == metrics["num_parameters"]
    # HF's GPT2ForSequenceClassification pools the last token: the <|extract|> state.
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    tokenizer = load_tokenizer(tmp_path / "model")
    data = load_choice_data(config, None, "k")
    assert_metrics_match(
        metrics,
        data.dev,
        lambda context, option: model(input_ids=torch.tensor([gpt1_ids(tokenizer, context, option)])).logits[
            0, 0
        ],
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == {k: v for k, v in metrics.items() if k not in TIMING}
    telemetry = json.loads((tmp_path / "telemetry" / "timings.json").read_text())
    assert len(telemetry["epoch_seconds"]) == 3


def test_auxiliary_lm_loss_covers_every_option_sequence(gpt2_dir, piqa_dir):
    """The batch loss with weight w is the task loss plus w x GPT-2's own LM loss over all the
    options' sequences (the transform tokens never targets)."""
    from transformers import GPT2LMHeadModel

    config = piqa_config(piqa_dir)
    data = load_choice_data(config, None, "k")
    questions, losses = data.train[:4], {}
    for weight in (0.0, 0.7):
        head = causal_head(
            config.model_copy(update={"aux_lm_weight": weight}),
            gpt2_dir,
            "pretrained",
            Cell("finetune", 4, 0),
            0,
        )
        head.model.train()
        for module in head.model.modules():  # training mode (the aux loss is a training loss), no dropout
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        scores, auxiliary = head.scores(head.encode(questions))
        losses[weight] = (
            F.cross_entropy(scores, torch.tensor([q.label for q in questions])) + auxiliary
        ).item()
    lm = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    lm.resize_token_embeddings(head.model.get_input_embeddings().weight.shape[0], mean_resizing=False)
    lm.transformer.load_state_dict(head.model.transformer.state_dict())
    total, count = 0.0, 0
    added = [head.tokenizer.convert_tokens_to_ids(token) for token in (START, DELIM, EXTRACT)]
    with torch.no_grad():
        for question in questions:
            for option in question.options:
                ids = gpt1_ids(head.tokenizer, question.context, option)
                targets = torch.tensor([IGNORE if t in added else t for t in ids[1:]])
                logits = lm(input_ids=torch.tensor([ids])).logits[0, :-1]
                total += float(F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum"))
                count += int((targets != IGNORE).sum())
    assert losses[0.7] == pytest.approx(losses[0.0] + 0.7 * total / count, rel=1e-4)


IGNORE = -100


def test_bert_multiple_choice_head_on_pooled_cls(bert_dir, piqa_dir, tmp_path):
    from transformers import BertForMultipleChoice

    config = piqa_config(piqa_dir)
    metrics = run(config, Cell("finetune", None, 1), bert_dir, "random", None, tmp_path)
    assert metrics["input_format"] == "[CLS] context [SEP] option [SEP]" and metrics["seed"] == 0
    assert metrics["train_size"] == 36 and metrics["requested_train_size"] == "all"
    model = BertForMultipleChoice.from_pretrained(tmp_path / "model").eval()
    tokenizer = load_tokenizer(bert_dir)

    def score(context: str, option: str) -> torch.Tensor:
        a, b = ids_of(tokenizer, context), ids_of(tokenizer, option)
        ids = [tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return model(input_ids=torch.tensor([[ids]]), token_type_ids=torch.tensor([[types]])).logits[0, 0]

    assert_metrics_match(metrics, load_choice_data(config, None, "k").dev, score)


def test_gpt_linear_probe_trains_one_linear_layer_on_the_frozen_extract_state(gpt2_dir, piqa_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    config = piqa_config(piqa_dir, save_model=True)
    metrics = run(config, Cell("linear_probe", 32, 0), gpt2_dir, "pretrained", None, tmp_path)
    assert metrics["trainable_parameters"] == 32 and "aux_lm_weight" not in metrics
    assert metrics["input_format"].endswith("probe on the extract state")
    before = load_file(gpt2_dir / "model.safetensors")
    body = load_file(tmp_path / "model" / "model.safetensors")
    for name, tensor in before.items():
        saved = body[name.removeprefix("transformer.")]
        assert torch.equal(saved[: tensor.shape[0]], tensor), name  # wte grew by the transform tokens
    weight = load_file(tmp_path / "model" / PROBE_HEAD_FILE)["weight"]
    assert weight.shape == (1, 32)
    model = AutoModel.from_pretrained(tmp_path / "model").eval()
    tokenizer = load_tokenizer(tmp_path / "model")
    assert_metrics_match(
        metrics,
        load_choice_data(config, None, "k").dev,
        lambda c, o: (
            model(input_ids=torch.tensor([gpt1_ids(tokenizer, c, o)])).last_hidden_state[0, -1] @ weight[0]
        ),
    )


def test_bert_probe_uses_the_cls_state_and_reruns_identically(bert_dir, piqa_dir, tmp_path):
    config = piqa_config(piqa_dir, save_model=False, epochs=2)
    for name in ("a", "b"):
        metrics = run(config, Cell("linear_probe", 24, 0), bert_dir, "random", None, tmp_path / name)
    assert metrics["trainable_parameters"] == 32 and metrics["num_parameters"] > 1000
    for file in ("metrics.json", "loss_curve.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_t5_scores_options_by_their_summed_log_probability(t5_dir, piqa_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    config = piqa_config(piqa_dir, epochs=2, learning_rate=1e-2)
    metrics = run(config, Cell("finetune", 24, 0), t5_dir, "pretrained", None, tmp_path / "ft")
    assert metrics["model_family"] == "seq2seq"
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ft" / "model").eval()
    tokenizer = load_tokenizer(tmp_path / "ft" / "model")
    eos = tokenizer.eos_token_id

    def score(context: str, option: str) -> float:
        source, target = ids_of(tokenizer, context) + [eos], ids_of(tokenizer, option) + [eos]
        loss = model(input_ids=torch.tensor([source]), labels=torch.tensor([target])).loss
        return -float(loss) * len(target)  # HF's loss is the mean over the target's tokens

    assert_metrics_match(metrics, load_choice_data(config, None, "k").dev, score)
    probe = run(config, Cell("linear_probe", 24, 0), t5_dir, "pretrained", None, tmp_path / "probe")
    assert probe["trainable_parameters"] == 32 and probe["input_format"].endswith("mean encoder state")


def test_rows_with_empty_parts_are_skipped_and_bad_labels_named(tmp_path):
    rows = sentiment_questions(8)
    broken = (
        json.dumps({"goal": "", "sol1": "a", "sol2": "b"}),
        json.dumps({"goal": "g", "sol1": "a", "sol2": " "}),
    )
    write_piqa(tmp_path / "ok", rows, broken)
    data = load_choice_data(piqa_config(tmp_path / "ok"), None, "k")
    assert data.skipped == {
        "train": [
            f"{tmp_path / 'ok' / 'valid.jsonl'}:9: empty context",
            f"{tmp_path / 'ok' / 'valid.jsonl'}:10: empty option 1",
        ]
    }
    assert len(data.train) + len(data.dev) == 8 and data.num_options == 2
    bad = write_piqa(tmp_path / "bad", [*rows[:3], ("a goal", ["x", "y"], 2)])
    with pytest.raises(
        DataError, match=rf"label '2' at {bad / 'valid-labels.lst'}:4 is not an option index 0-1"
    ):
        load_choice_data(piqa_config(bad), None, "k")
    with pytest.raises(DataError, match="after subtracting label_offset 1"):
        load_choice_data(piqa_config(tmp_path / "ok", label_offset=1), None, "k")


def test_option_lists_csv_columns_and_a_dev_file(tmp_path):
    lines = [
        json.dumps({"q": f"question {i}", "choices": ["a", "b", "c"], "answer": i % 3 + 1}) for i in range(6)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    # A csv cell holding a JSON list is read as the list.
    (tmp_path / "dev.csv").write_text('q,choices,answer\n"what, then","[""x"", ""y"", ""z""]",3\n')
    columns = {"context": "q", "options": "choices", "label": "answer"}
    config = MultipleChoiceConfig(
        train_path="train.jsonl", dev_path="dev.csv", columns=columns, label_offset=1
    )
    data = load_choice_data(config, tmp_path, "k")
    assert [q.label for q in data.train] == [0, 1, 2, 0, 1, 2] and data.dev_source == "dev.csv"
    assert data.dev[0].context == "what, then" and data.dev[0].options == ("x", "y", "z")
    (tmp_path / "dev.csv").write_text(
        'q,choices,answer\nwhat,"[""x"", ""y"", ""z""]",3\nwhy,"[""x"", ""y""]",1\n'
    )
    with pytest.raises(DataError, match=r"dev.csv:3 has 2 options but train.jsonl:1 has 3"):
        load_choice_data(config, tmp_path, "k")
    (tmp_path / "dev.csv").write_text("q,choices,answer\nwhat,x,1\n")
    with pytest.raises(DataError, match="should hold a list of options"):
        load_choice_data(config, tmp_path, "k")
    # One column per option, by name or position; 1-based answers.
    (tmp_path / "options.csv").write_text("q,o1,o2,o3,answer\nwhy,x,y,z,3\nhow,x,y,z,1\nwho,x,y,z,2\n")
    by_columns = MultipleChoiceConfig(
        train_path="options.csv",
        columns={"context": 0, "options": ["o1", 2, "o3"], "label": "answer"},
        label_offset=1,
    )
    data = load_choice_data(by_columns.model_copy(update={"dev_fraction": 0.34}), tmp_path, "k")
    assert sorted(q.label for q in data.train + data.dev) == [0, 1, 2]
    assert data.dev[0].options == ("x", "y", "z")


def test_config_checks_columns():
    def check(columns, **extra):
        validate_config(
            FinetuneConfig,
            {"tasks": [{"type": "multiple_choice", "train_path": "x.jsonl", "columns": columns, **extra}]},
        )

    with pytest.raises(ConfigError, match="did you mean 'options'"):
        check({"context": "goal", "option": ["a", "b"], "label": "l"})
    with pytest.raises(ConfigError, match="at least 2 distinct columns"):
        check({"context": "goal", "options": ["a"], "label": "l"})
    with pytest.raises(ConfigError, match="must name label"):
        check({"context": "goal", "options": ["a", "b"]})
    check({"context": "goal", "options": ["a", "b"]}, train_labels_path="labels.lst")


def test_choice_metrics():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    metrics = choice_metrics(scores, [0, 1, 1])
    assert metrics["dev_accuracy"] == 1 / 3  # ties go to the first option
    expected = -(torch.log_softmax(scores.double(), -1)[[0, 1, 2], [0, 1, 1]]).mean()
    assert metrics["dev_loss"] == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.skipif(not os.environ.get("LMFORGE_DATA_DIR"), reason="LMFORGE_DATA_DIR is not set")
def test_real_piqa_validation_reads_whole():
    config = MultipleChoiceConfig(
        train_path="piqa/valid.jsonl",
        train_labels_path="piqa/valid-labels.lst",
        columns=PIQA,
        dev_fraction=0.2,
    )
    data = load_choice_data(config, Path(os.environ["LMFORGE_DATA_DIR"]), "k")
    assert data.num_options == 2 and len(data.train) + len(data.dev) + len(data.skipped["train"]) == 1838
    assert len(data.dev) == round(0.2 * (len(data.train) + len(data.dev)))
    assert {q.label for q in data.train} == {0, 1}
