"""Classification fine-tuning per paradigm (BERT [CLS], GPT-1 transforms + auxiliary LM loss, T5
text to text), linear probes, grids and data handling; metrics checked against the saved model run
one example at a time through Hugging Face's own classes."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.core.configbase import identity_view, validate_config
from lmforge.core.errors import ArtifactError, ConfigError, DataError
from lmforge.tasks import FINETUNE_TASKS, FinetuneConfig
from lmforge.tasks.classification import (
    DELIM,
    EXTRACT,
    START,
    add_transform_tokens,
    build_sequence_classifier,
    classification_metrics,
    load_task_data,
)
from lmforge.tasks.config import Cell, ClassificationConfig, Sst2FinetuneConfig, TargetConfig
from lmforge.tasks.finetune import epochs_to_target, instantiate
from lmforge.tasks.modeling import load_tokenizer
from lmforge.tasks.readers import LabelSet
from tests.unit.test_tasks_support import build_tiny_bert, build_tiny_gpt2, write_sst2
from tests.unit.test_tasks_t5_support import build_tiny_t5, write_synthetic_sst2

pytestmark = pytest.mark.unit
CONFIG = Sst2FinetuneConfig(epochs=6, batch_size=8, learning_rate=3e-3, max_length=24, save_model=True)
CELL = Cell("finetune", 32, 0)
TWO = LabelSet(["0", "1"])


def run(config, cell, model_dir, init, data_dir, out, seed=0):
    return FINETUNE_TASKS[config.type].run(config, cell, model_dir, init, data_dir, out, seed)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_sst2(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), with_pad=False)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def test_random_and_pretrained_share_config_not_weights(gpt2_dir):
    from transformers import AutoModelForCausalLM

    pretrained = build_sequence_classifier(gpt2_dir, "pretrained", TWO, pad_token_id=0, seed=1)
    random_init = build_sequence_classifier(gpt2_dir, "random", TWO, pad_token_id=0, seed=1)
    assert pretrained.config.to_dict() == random_init.config.to_dict()
    assert pretrained.config.pad_token_id == 0 and pretrained.config.num_labels == 2
    lm_state = AutoModelForCausalLM.from_pretrained(gpt2_dir).state_dict()
    body = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(pretrained.state_dict()[body], lm_state[body])
    assert not torch.equal(random_init.state_dict()[body], lm_state[body])
    again = build_sequence_classifier(gpt2_dir, "random", TWO, pad_token_id=0, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(random_init.parameters(), again.parameters(), strict=True))


def reference_logits(model_dir, texts_and_pairs, form):
    """The saved classifier's logits, one unpadded example at a time through HF's own forward."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    rows = []
    with torch.no_grad():
        for text, pair in texts_and_pairs:
            ids = form(tokenizer, text, pair)
            rows.append(model(input_ids=torch.tensor([ids])).logits[0].double())
    return rows


def gpt1_form(tokenizer, text, pair):
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.convert_tokens_to_ids(START), *body]
    if pair is not None:
        ids += [
            tokenizer.convert_tokens_to_ids(DELIM),
            *tokenizer(pair, add_special_tokens=False)["input_ids"],
        ]
    return [*ids, tokenizer.convert_tokens_to_ids(EXTRACT)]


def assert_metrics_match_saved_model(metrics, output_dir, data, form):
    logits = reference_logits(output_dir / "model", [(row.text, row.text_pair) for row in data.dev], form)
    predictions = [int(row.argmax()) for row in logits]
    gold = [row.label for row in data.dev]
    reference = classification_metrics(predictions, gold, len(data.labels.names))
    assert metrics["dev_accuracy"] == reference["accuracy"]
    assert metrics["dev_macro_f1"] == pytest.approx(reference["macro_f1"], abs=1e-12)
    loss = sum(-float(torch.log_softmax(row, -1)[label]) for row, label in zip(logits, gold, strict=True))
    assert metrics["dev_loss"] == pytest.approx(loss / len(gold), rel=1e-5)


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_gpt_finetune_uses_gpt1_transforms_learns_and_saves(gpt2_dir, data_dir, tmp_path, init):
    from transformers import AutoModelForSequenceClassification

    metrics = run(
        CONFIG.model_copy(update={"eval_every_epoch": True}), CELL, gpt2_dir, init, data_dir, tmp_path
    )
    assert metrics["train_size"] == 32 and metrics["num_steps"] == 6 * 4 == len(metrics["loss_curve"])
    assert metrics["input_format"] == f"{START} A {EXTRACT}" and metrics["aux_lm_weight"] == 0.5
    assert metrics["final_train_loss"] < metrics["initial_train_loss"] - 0.1
    assert [row["epoch"] for row in metrics["epoch_metrics"]] == list(range(1, 7))
    assert metrics["epoch_metrics"][-1]["dev_accuracy"] == metrics["dev_accuracy"]
    data = load_task_data(CONFIG, data_dir, "k")
    # HF's GPT2ForSequenceClassification pools the last non-pad token: the <|extract|> state.
    assert_metrics_match_saved_model(metrics, tmp_path, data, gpt1_form)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    # metrics.json is part of the content id: exactly the returned metrics without time or curve.
    timing = ("seconds", "loss_curve", "epoch_seconds", "target_reached_seconds")
    assert saved == {k: v for k, v in metrics.items() if k not in timing}
    telemetry = json.loads((tmp_path / "telemetry" / "timings.json").read_text())
    assert len(telemetry["epoch_seconds"]) == 6 and telemetry["seconds"] == metrics["seconds"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert reloaded.config.id2label == {0: "0", 1: "1"}
    # The tokenizer had no pad token: EOS pads, and the saved config says so.
    assert reloaded.config.pad_token_id == load_tokenizer(tmp_path / "model").pad_token_id is not None


def test_auxiliary_lm_loss_is_the_lm_loss_on_the_task_text(gpt2_dir, data_dir):
    """One batch's loss with aux weight w is the task loss plus w x GPT-2's own LM loss on the same
    sequences (the transform tokens never targets); weight 0 leaves the task loss alone."""
    from transformers import GPT2LMHeadModel

    from lmforge.tasks.classification import causal_head

    data = load_task_data(CONFIG, data_dir, "k")
    rows = data.train[:4]
    losses = {}
    for weight in (0.0, 0.7):
        head = causal_head(
            CONFIG.model_copy(update={"aux_lm_weight": weight}), gpt2_dir, "pretrained", data, rows, CELL, 0
        )
        head.model.train()
        for module in head.model.modules():  # training mode (the aux loss is a training loss), no dropout
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        losses[weight] = head.batch_loss([0, 1, 2, 3]).item()
    lm = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    lm.resize_token_embeddings(head.model.get_input_embeddings().weight.shape[0], mean_resizing=False)
    lm.transformer.load_state_dict(head.model.transformer.state_dict())
    total, count = 0.0, 0
    extract = head.tokenizer.convert_tokens_to_ids(EXTRACT)
    with torch.no_grad():
        for row in rows:
            ids = gpt1_form(head.tokenizer, row.text, None)
            targets = torch.tensor(ids[1:])
            targets[targets == extract] = -100
            logits = lm(input_ids=torch.tensor([ids])).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += int((targets != -100).sum())
    assert losses[0.7] == pytest.approx(losses[0.0] + 0.7 * total / count, rel=1e-4)


def test_bert_and_t5_linear_probes_train_one_linear_layer_on_frozen_features(
    bert_dir, t5_dir, data_dir, tmp_path
):
    from transformers import AutoModel

    metrics = run(
        CONFIG.model_copy(update={"epochs": 2}),
        Cell("linear_probe", 32, 0),
        bert_dir,
        "pretrained",
        data_dir,
        tmp_path / "b",
    )
    assert metrics["trainable_parameters"] == 32 * 2 + 2  # hidden x classes + bias
    assert metrics["input_format"].endswith("linear probe on the frozen [CLS] state")
    assert (tmp_path / "b" / "model" / "probe_head.safetensors").is_file()
    # The features are the frozen body's [CLS] state: the saved head on them reproduces dev accuracy.
    from safetensors.torch import load_file

    head = load_file(tmp_path / "b" / "model" / "probe_head.safetensors")
    body = AutoModel.from_pretrained(bert_dir).eval()
    tokenizer = load_tokenizer(bert_dir)
    data = load_task_data(CONFIG, data_dir, "k")
    correct = 0
    with torch.no_grad():
        for row in data.dev:
            ids = tokenizer(row.text, truncation=True, max_length=CONFIG.max_length)["input_ids"]
            state = body(input_ids=torch.tensor([ids])).last_hidden_state[0, 0]
            correct += int((head["weight"] @ state + head["bias"]).argmax()) == row.label
    assert metrics["dev_accuracy"] == correct / len(data.dev)
    t5 = run(
        CONFIG.model_copy(update={"epochs": 1}),
        Cell("linear_probe", 32, 0),
        t5_dir,
        "random",
        data_dir,
        tmp_path / "t",
    )
    assert t5["trainable_parameters"] == 32 * 2 + 2


def test_linear_probe_trains_only_the_head(gpt2_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    metrics = run(CONFIG, Cell("linear_probe", 32, 0), gpt2_dir, "pretrained", data_dir, tmp_path)
    assert metrics["trainable_parameters"] == 32 * 2 and metrics["aux_lm_weight"] == 0.0
    before, after = (
        load_file(gpt2_dir / "model.safetensors"),
        load_file(tmp_path / "model" / "model.safetensors"),
    )
    assert set(after) - set(before) == {"score.weight"}
    for name, tensor in before.items():
        if name in after:
            kept = after[name][: tensor.shape[0]]  # the embedding table grew by the transform tokens
            assert torch.equal(kept, tensor), name


def test_finetune_metrics_file_is_identical_on_a_rerun_from_another_data_dir(gpt2_dir, data_dir, tmp_path):
    """metrics.json is the artifact's content: the same on a rerun, wherever the data directory is."""
    import shutil

    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(data_dir, moved)
    (moved / "sst2" / "train.tsv").write_text(
        (moved / "sst2" / "train.tsv").read_text() + "bad\trow\textra\n"
    )
    config = CONFIG.model_copy(update={"epochs": 1, "save_model": False, "target": TargetConfig(value=0.0)})
    run(config, CELL, gpt2_dir, "random", moved, tmp_path / "a")
    shutil.move(tmp_path / "elsewhere", tmp_path / "moved-again")
    run(config, CELL, gpt2_dir, "random", tmp_path / "moved-again" / "data", tmp_path / "b")
    for file in ("metrics.json", "loss_curve.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["dev_source"] == "sst2/dev.tsv" and saved["skipped_rows"] == {"train": 1, "dev": 0}
    assert saved["skipped_examples"]["train"][0].startswith("sst2/train.tsv:")
    assert str(tmp_path) not in (tmp_path / "a" / "metrics.json").read_text()
    assert saved["epochs_to_target"] == 1
    assert "target_reached_seconds" not in saved


def write_pairs(path, rows, header="premise,hypothesis,gold"):
    lines = [header] + [f'"{a}","{b}",{label}' for a, b, label in rows]
    path.write_text("\n".join(lines) + "\n")


PAIRS = [
    ("the film is good", "it is good", "entailment"),
    ("the film is bad", "it is good", "contradiction"),
    ("a great movie", "a great movie indeed", "entailment"),
    ("an awful movie", "a great movie", "contradiction"),
    ("the cast is fine", "the weather is cold", "neutral"),
] * 8


def test_bert_pairs_three_classes_from_csv_with_a_carved_dev_set(bert_dir, tmp_path):
    write_pairs(tmp_path / "nli.csv", PAIRS)
    config = ClassificationConfig(
        id="nli",
        train_path=str(tmp_path / "nli.csv"),
        columns={"text": "premise", "text_pair": "hypothesis", "label": "gold"},
        dev_fraction=0.25,
        epochs=2,
        batch_size=8,
        learning_rate=3e-3,
        max_length=32,
        save_model=True,
    )
    data = load_task_data(config, None, "k")
    assert data.labels.names == ["contradiction", "entailment", "neutral"]
    assert len(data.dev) == 10 and len(data.train) == 30
    metrics = run(config, Cell("finetune", None, 1), bert_dir, "pretrained", None, tmp_path / "out")
    assert metrics["input_format"] == "[CLS] A [SEP] B [SEP]" and metrics["train_size"] == 30
    assert metrics["labels"] == ["contradiction", "entailment", "neutral"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model").eval()
    tokenizer = load_tokenizer(bert_dir)
    # [CLS] A [SEP] B [SEP] with token types 0 then 1, as BERT's own pair encoding.
    first = data.dev[0]
    a = tokenizer(first.text, add_special_tokens=False)["input_ids"]
    b = tokenizer(first.text_pair, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0]
    assert metrics["epoch_metrics"][-1]["dev_loss"] == metrics["dev_loss"]
    assert torch.isfinite(logits).all()


def test_symmetric_pairs_sum_both_orders(gpt2_dir, tmp_path):
    write_pairs(tmp_path / "sim.csv", [(a, b, "1" if lab == "entailment" else "0") for a, b, lab in PAIRS])
    config = ClassificationConfig(
        id="sim",
        train_path=str(tmp_path / "sim.csv"),
        columns={"text": "premise", "text_pair": "hypothesis", "label": "gold"},
        symmetric=True,
        epochs=1,
        batch_size=8,
        max_length=32,
    )
    metrics = run(config, Cell("finetune", 16, 0), gpt2_dir, "random", None, tmp_path / "out")
    assert metrics["input_format"] == f"{START} A {DELIM} B {EXTRACT} (both orders, logits summed)"
    with pytest.raises(ConfigError, match="symmetric"):
        validate_config(
            FinetuneConfig, {"tasks": [{"type": "classification", "train_path": "x.csv", "symmetric": True}]}
        )


def test_t5_text_to_text_and_probe(t5_dir, tmp_path):
    write_synthetic_sst2(tmp_path / "data", num_train=48, num_dev=20)
    config = Sst2FinetuneConfig(epochs=6, batch_size=8, learning_rate=1e-2, max_length=24, save_model=True)
    metrics = run(config, Cell("finetune", None, 0), t5_dir, "random", tmp_path / "data", tmp_path / "tt")
    assert metrics["model_family"] == "seq2seq" and metrics["dev_majority_baseline_accuracy"] == 0.5
    assert metrics["dev_accuracy"] >= 0.95 and metrics["dev_invalid_fraction"] == 0
    # Check against the saved model's own greedy generation, one example at a time.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "tt" / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tt" / "model")
    data = load_task_data(config, tmp_path / "data", "k")
    correct = 0
    with torch.no_grad():
        for row in data.dev:
            source = tokenizer("sst2 sentence: " + row.text, return_tensors="pt")
            output = model.generate(**source, max_new_tokens=8, do_sample=False, num_beams=1)
            correct += (
                tokenizer.decode(output[0], skip_special_tokens=True).strip()
                == ["negative", "positive"][row.label]
            )
    assert metrics["dev_accuracy"] == correct / len(data.dev)
    probe = run(
        config, Cell("linear_probe", None, 0), t5_dir, "pretrained", tmp_path / "data", tmp_path / "p"
    )
    assert probe["trainable_parameters"] < probe["num_parameters"] / 10
    assert "dev_invalid_fraction" not in probe


def test_grid_cells_seeds_and_recipes():
    config = validate_config(
        FinetuneConfig,
        {
            "tasks": [
                {"name": "sst2", "train_sizes": [100, "all"], "strategies": ["finetune", "linear_probe"]}
            ]
        },
    ).tasks[0]
    cells = config.cells()
    assert len(cells) == 2 * 2 * 3 and cells[0] == Cell("finetune", 100, 0)
    assert [cell.label for cell in cells[:4]] == [
        "finetune-100-s0",
        "finetune-100-s1",
        "finetune-100-s2",
        "finetune-all-s0",
    ]
    assert Cell("finetune", None, 2).seed(1234) == 1236
    # The grid is not part of a cell's recipe: adding a seed or a size reuses every existing cell.
    wider = config.model_copy(update={"seeds": 5, "train_sizes": [100, 500, "all"]})
    assert identity_view(wider) == identity_view(config)


def test_dev_set_scored_every_epoch_only_when_asked_or_a_target_is_set(gpt2_dir, data_dir, tmp_path):
    config = CONFIG.model_copy(update={"epochs": 2, "save_model": False})
    assert not config.evaluates_each_epoch
    assert config.model_copy(update={"target": TargetConfig(value=0.9)}).evaluates_each_epoch
    last_only = run(config, CELL, gpt2_dir, "random", data_dir, tmp_path / "a")
    assert [row["epoch"] for row in last_only["epoch_metrics"]] == [2] and len(
        last_only["epoch_seconds"]
    ) == 2
    every = run(
        config.model_copy(update={"eval_every_epoch": True}),
        CELL,
        gpt2_dir,
        "random",
        data_dir,
        tmp_path / "b",
    )
    assert [row["epoch"] for row in every["epoch_metrics"]] == [1, 2]
    # Scoring the dev set draws no randomness: the final model and its metrics are the same.
    assert every["epoch_metrics"][-1] == last_only["epoch_metrics"][-1]


def test_metrics_and_target_epochs():
    assert classification_metrics([0, 1, 1, 2, -1], [0, 1, 2, 2, 0], 3) == {
        "accuracy": 0.6,
        # class 0: tp 1, fn 1 -> 2/3; class 1: tp 1, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 2/3
        "macro_f1": pytest.approx(2 / 3),
    }
    rows = [
        {"epoch": 1, "dev_accuracy": 0.5},
        {"epoch": 2, "dev_accuracy": 0.8},
        {"epoch": 3, "dev_accuracy": 0.9},
    ]
    assert epochs_to_target(rows, "accuracy", 0.8) == 2 and epochs_to_target(rows, "accuracy", 0.95) is None


def test_bad_data_is_counted_or_named(tmp_path):
    (tmp_path / "t.tsv").write_text("text\tlabel\ngood film\tpos\n\tneg\nbad film\tneg\nfine\tpos\tx\n")
    config = ClassificationConfig(id="t", train_path=str(tmp_path / "t.tsv"), dev_fraction=0.5)
    data = load_task_data(config, None, "k")
    assert len(data.skipped["train"]) == 2  # the empty text, and the row with three fields
    listed = config.model_copy(update={"labels": ["neg", "pos"]})
    (tmp_path / "u.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tmeh\n")
    with pytest.raises(DataError, match="meh"):
        load_task_data(listed.model_copy(update={"train_path": str(tmp_path / "u.tsv")}), None, "k")
    (tmp_path / "v.tsv").write_text("words\tlabel\ngood film\tpos\nbad film\tneg\n")
    with pytest.raises(DataError, match=r"column 'text' not found .*words, label"):
        load_task_data(config.model_copy(update={"train_path": str(tmp_path / "v.tsv")}), None, "k")
    (tmp_path / "w.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tpos\n")
    with pytest.raises(DataError, match="at least 2"):
        load_task_data(config.model_copy(update={"train_path": str(tmp_path / "w.tsv")}), None, "k")


def test_instantiate_rejects_unknown_init(gpt2_dir):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with pytest.raises(ConfigError, match="init"):
        instantiate(
            AutoModelForSequenceClassification, gpt2_dir, AutoConfig.from_pretrained(gpt2_dir), "warm", 0
        )


@pytest.mark.parametrize("vocab_multiple_of", [1, 64])
def test_transform_tokens_get_mean_rows_in_a_padded_tables_spare_rows_or_new_ones(
    tmp_path, vocab_multiple_of
):
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_gpt2(tmp_path, with_pad=False, vocab_multiple_of=vocab_multiple_of)
    tokenizer, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    before, rows = len(tokenizer), model.get_input_embeddings().weight.shape[0]
    if vocab_multiple_of > 1:
        assert rows - before >= 3, "the test needs a table with room for the three transform tokens"
    table = model.get_input_embeddings().weight.detach().clone()

    ids = add_transform_tokens(tokenizer, model)

    assert sorted(ids.values()) == [before, before + 1, before + 2] and len(tokenizer) == before + 3
    after = model.get_input_embeddings().weight.detach()
    # A padded table lends its spare rows and keeps its size; an exact one grows by three rows.
    assert after.shape[0] == max(rows, before + 3)
    assert torch.equal(after[:before], table[:before])
    expected_row = table[:before].mean(0)
    assert all(torch.allclose(after[i], expected_row) for i in ids.values())
    assert torch.equal(after[before + 3 :], table[before + 3 :])  # the other spare rows untouched
    with pytest.raises(ArtifactError, match="already has transform token"):
        add_transform_tokens(tokenizer, model)
