"""SST-2 fine-tuning: learns on a tiny subset, pretrained vs random init share the architecture only;
T5 text to text, its accuracy checked against per-example generation."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.app.report import fmt, summary_rows
from lmforge.tasks import FINETUNE_TASKS
from lmforge.tasks.config import Sst2FinetuneConfig
from lmforge.tasks.data import LabelledText, load_sst2
from lmforge.tasks.finetune import build_classifier, build_seq2seq, encode
from lmforge.tasks.modeling import load_tokenizer
from tests.unit.test_tasks_support import build_tiny_bert, build_tiny_gpt2, write_sst2
from tests.unit.test_tasks_t5_support import build_tiny_t5, write_synthetic_sst2

pytestmark = pytest.mark.unit
CONFIG = Sst2FinetuneConfig(train_size=32, epochs=6, batch_size=8, learning_rate=3e-3, max_length=24)


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


def test_random_and_pretrained_share_config_not_weights(gpt2_dir):
    from transformers import AutoModelForCausalLM

    pretrained = build_classifier(gpt2_dir, "pretrained", pad_token_id=0, seed=1)
    random_init = build_classifier(gpt2_dir, "random", pad_token_id=0, seed=1)
    assert pretrained.config.to_dict() == random_init.config.to_dict()
    assert pretrained.config.pad_token_id == 0 and pretrained.config.num_labels == 2
    lm_state = AutoModelForCausalLM.from_pretrained(gpt2_dir).state_dict()
    body = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(pretrained.state_dict()[body], lm_state[body])
    assert not torch.equal(random_init.state_dict()[body], lm_state[body])
    # Seeded: the same init twice is the same model.
    again = build_classifier(gpt2_dir, "random", pad_token_id=0, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(random_init.parameters(), again.parameters(), strict=True))


def brute_force_dev_metrics(classifier_dir, data_dir) -> tuple[int, float]:
    """(correct predictions, mean loss) of the saved classifier, one unpadded dev example at a time."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tokenizer = load_tokenizer(classifier_dir)
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for row in dev:
            # The tokenizer's own post-processor adds [CLS]/[SEP] for BERT and nothing for GPT-2.
            ids = tokenizer(row.text, truncation=True, max_length=CONFIG.max_length)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            correct += int(logits.argmax()) == row.label
            loss_sum -= float(torch.log_softmax(logits, -1)[row.label])
    return correct, loss_sum / len(dev)


def assert_dev_metrics_match_saved_model(metrics, output_dir, data_dir):
    correct, loss = brute_force_dev_metrics(output_dir / "model", data_dir)
    assert metrics["dev_accuracy"] == correct / metrics["dev_size"]
    assert metrics["dev_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_gpt2_finetune_learns_and_saves(gpt2_dir, data_dir, tmp_path, init):
    from transformers import AutoModelForSequenceClassification

    metrics = FINETUNE_TASKS["sst2"].run(CONFIG, gpt2_dir, init, data_dir, tmp_path, 0)
    assert metrics["train_size"] == 32 and metrics["num_steps"] == 6 * 4 and len(metrics["loss_curve"]) == 24
    assert metrics["final_train_loss"] < metrics["initial_train_loss"] - 0.1
    assert_dev_metrics_match_saved_model(metrics, tmp_path, data_dir)
    assert json.loads((tmp_path / "loss_curve.json").read_text()) == metrics["loss_curve"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    # metrics.json is part of the content id: exactly the returned metrics without time or curve.
    assert saved == {k: v for k, v in metrics.items() if k not in ("seconds", "loss_curve")}
    assert json.loads((tmp_path / "telemetry" / "timings.json").read_text()) == {
        "seconds": metrics["seconds"]
    }
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    # The tokenizer had no pad token: EOS pads, and the saved config says so.
    assert reloaded.config.pad_token_id == load_tokenizer(tmp_path / "model").pad_token_id is not None


def test_finetune_metrics_file_is_identical_on_a_rerun(gpt2_dir, data_dir, tmp_path):
    for name in ("a", "b"):
        FINETUNE_TASKS["sst2"].run(CONFIG, gpt2_dir, "random", data_dir, tmp_path / name, 0)
    for file in ("metrics.json", "loss_curve.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_bert_encoding_and_finetune(bert_dir, data_dir, tmp_path):
    tokenizer = load_tokenizer(bert_dir)
    [ids] = encode(tokenizer, [LabelledText("a charming film " * 20, 1)], max_length=10)
    assert len(ids) == 10 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    metrics = FINETUNE_TASKS["sst2"].run(CONFIG, bert_dir, "pretrained", data_dir, tmp_path, 0)
    assert metrics["final_train_loss"] < metrics["initial_train_loss"]
    assert_dev_metrics_match_saved_model(metrics, tmp_path, data_dir)


T5_CONFIG = Sst2FinetuneConfig(train_size=24, epochs=2, batch_size=8, learning_rate=3e-3, max_length=24)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "hf")


def test_t5_random_and_pretrained_share_config_not_weights(t5_dir):
    from transformers import AutoModelForSeq2SeqLM

    pretrained = build_seq2seq(t5_dir, "pretrained", seed=1)
    random_init = build_seq2seq(t5_dir, "random", seed=1)
    assert pretrained.config.to_dict() == random_init.config.to_dict()
    saved = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).state_dict()
    body = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert torch.equal(pretrained.state_dict()[body], saved[body])
    assert not torch.equal(random_init.state_dict()[body], saved[body])
    again = build_seq2seq(t5_dir, "random", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(random_init.parameters(), again.parameters(), strict=True))


def brute_force_text_to_text(model_dir, data_dir, config) -> dict[str, float]:
    """Dev metrics of the saved model, one unpadded example at a time: generate, decode, compare."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dev = load_sst2("sst2/dev.tsv", data_dir, "k", "validation")
    correct = invalid = 0
    loss_sum, num_tokens = 0.0, 0
    with torch.no_grad():
        for row in dev:
            text = config.text_to_text_prefix + row.text
            source = tokenizer(text, truncation=True, max_length=config.max_length, return_tensors="pt")
            assert source["input_ids"][0, -1] == tokenizer.eos_token_id
            target = tokenizer(config.label_words[row.label], return_tensors="pt")["input_ids"]
            output = model.generate(**source, max_new_tokens=8, do_sample=False, num_beams=1)
            generated = tokenizer.decode(output[0], skip_special_tokens=True).strip()
            correct += generated == config.label_words[row.label]
            invalid += generated not in config.label_words
            loss_sum += float(model(**source, labels=target).loss) * target.shape[1]
            num_tokens += target.shape[1]
    return {
        "dev_accuracy": correct / len(dev),
        "invalid_fraction": invalid / len(dev),
        "dev_loss": loss_sum / num_tokens,
    }


def assert_text_to_text_metrics_match_saved_model(metrics, output_dir, data_dir, config):
    reference = brute_force_text_to_text(output_dir / "model", data_dir, config)
    assert metrics["dev_accuracy"] == reference["dev_accuracy"]
    assert metrics["invalid_fraction"] == reference["invalid_fraction"]
    assert metrics["dev_loss"] == pytest.approx(reference["dev_loss"], rel=1e-5)


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_t5_text_to_text_finetune_on_sst2(t5_dir, data_dir, tmp_path, init):
    metrics = FINETUNE_TASKS["sst2"].run(T5_CONFIG, t5_dir, init, data_dir, tmp_path, 0)
    assert metrics["train_size"] == 24 and metrics["num_steps"] == 2 * 3 == len(metrics["loss_curve"])
    assert metrics["final_train_loss"] < metrics["initial_train_loss"]
    assert_text_to_text_metrics_match_saved_model(metrics, tmp_path, data_dir, T5_CONFIG)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == {k: v for k, v in metrics.items() if k not in ("seconds", "loss_curve")}
    assert json.loads((tmp_path / "loss_curve.json").read_text()) == metrics["loss_curve"]


@pytest.mark.parametrize(("epochs", "learning_rate"), [(2, 5e-3), (6, 1e-2)])
def test_t5_text_to_text_finetune_learns_a_trivial_task(t5_dir, tmp_path, epochs, learning_rate):
    """Sentences saying "good" vs "bad": a random-init tiny T5 must learn to answer the label word;
    half-way there, its right and wrong answers are still counted as per-example generation says."""
    write_synthetic_sst2(tmp_path / "data", num_train=48, num_dev=20)
    config = Sst2FinetuneConfig(
        train_size=None, epochs=epochs, batch_size=8, learning_rate=learning_rate, max_length=24
    )
    metrics = FINETUNE_TASKS["sst2"].run(config, t5_dir, "random", tmp_path / "data", tmp_path / "out", 0)
    assert_text_to_text_metrics_match_saved_model(metrics, tmp_path / "out", tmp_path / "data", config)
    assert metrics["dev_majority_baseline_accuracy"] == 0.5
    if epochs == 6:
        assert metrics["dev_accuracy"] >= 0.95 and metrics["invalid_fraction"] == 0
    else:  # both right and wrong answers, so the comparison above is not vacuous
        assert 0 < metrics["dev_accuracy"] < 1
    rows = dict(
        summary_rows(
            {
                "stages": {
                    f"finetune/sst2/{init}": {"metrics": metrics, "status": "completed"}
                    for init in ("pretrained", "random")
                }
            }
        )
    )
    accuracy = fmt(metrics["dev_accuracy"])
    assert rows["sst2 dev accuracy: pretrained vs random init"] == f"{accuracy} vs {accuracy}"
