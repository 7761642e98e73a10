"""Generic in-context classification: any table, pairs, several labels, multi-token label words,
length-normalized scoring and random demonstration labels, checked against prompts written out by
hand and scored one at a time with the full model."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.tasks import EVAL_TASKS, EvaluationConfig
from lmforge.tasks.classification import load_task_data
from lmforge.tasks.config import IclClassificationConfig
from lmforge.tasks.icl import run_icl_classification, sample_demonstrations
from lmforge.tasks.modeling import load_model, load_tokenizer
from tests.unit.test_tasks_support import build_tiny_gpt2

pytestmark = pytest.mark.unit
ROWS = [
    ("the cat sat on the mat", "a cat sat", "yes"),
    ("the dog ran home", "a cat ran", "no"),
    ("it rained all day", "it was sunny", "no"),
    ("she bought bread", "she went shopping", "maybe"),
    ("the film was long", "the film was short", "no"),
    ("he plays piano", "he is a musician", "maybe"),
    ("the sun is hot", "the sun is warm", "yes"),
    ("birds can fly", "birds have wings", "yes"),
] * 3
WORDS = {"yes": "definitely true", "no": "false", "maybe": "perhaps so"}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), n_positions=256)


@pytest.fixture(scope="module")
def nli_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "nli.tsv"
    path.write_text("premise\thypothesis\tgold\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in ROWS))
    return path


def config_for(path, **changes) -> IclClassificationConfig:
    return IclClassificationConfig(
        id="nli_icl",
        train_path=str(path),
        dev_fraction=0.25,
        max_dev_examples=4,
        columns={"text": "premise", "text_pair": "hypothesis", "label": "gold"},
        template="{text} Question: {text_pair}? Answer: {label}",
        label_words=WORDS,
        shots=[0, 2],
        scoring="mean",
        **changes,
    )


def brute_force_accuracy(model, tokenizer, demos, dev, labels, scoring) -> float:
    """The prompt written out by hand, every label word scored with one unpadded forward."""
    words = [WORDS[name] for name in labels]
    shown = "".join(f"{d.text} Question: {d.text_pair}? Answer: {words[d.label]}\n\n" for d in demos)
    correct = 0
    for row in dev:
        context = [
            tokenizer.eos_token_id,
            *tokenizer(f"{shown}{row.text} Question: {row.text_pair}? Answer:")["input_ids"],
        ]
        scores = []
        for word in words:
            continuation = tokenizer(" " + word)["input_ids"]
            ids = context + continuation
            with torch.no_grad():
                log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            total = sum(float(log_probs[t - 1, ids[t]]) for t in range(len(context), len(ids)))
            scores.append(total / len(continuation) if scoring == "mean" else total)
        correct += max(range(len(words)), key=scores.__getitem__) == row.label
    return correct / len(dev)


@pytest.mark.parametrize("random_labels", [False, True])
def test_run_equals_hand_written_prompts(gpt2_dir, nli_file, tmp_path, random_labels):
    config = config_for(nli_file, random_labels=random_labels, calibrate=False)
    metrics = run_icl_classification(config, gpt2_dir, None, None, tmp_path, seed=3)
    data = load_task_data(config, None, "k")
    assert metrics["labels"] == ["maybe", "no", "yes"] and metrics["label_words"] == [
        WORDS[n] for n in metrics["labels"]
    ]
    assert metrics["num_examples"] == 4 and metrics["random_labels"] is random_labels
    model, tokenizer = (
        load_model(__import__("transformers").AutoModelForCausalLM, gpt2_dir),
        load_tokenizer(gpt2_dir),
    )
    changed = 0
    for run in metrics["runs"]:
        indices = sample_demonstrations(data.train, run["k"], 3, run["ordering"] if run["k"] else 0)
        assert run["demonstration_indices"] == indices
        demos = [data.train[i] for i in indices]
        if random_labels and run["k"]:
            shown = run["demonstration_labels"]
            changed += sum(a != d.label for a, d in zip(shown, demos, strict=True))
            demos = [type(d)(d.text, d.text_pair, label) for d, label in zip(demos, shown, strict=True)]
        expected = brute_force_accuracy(model, tokenizer, demos, data.dev, metrics["labels"], "mean")
        assert run["accuracy"] == pytest.approx(expected), run
        assert "macro_f1" in run  # three labels: macro-F1 rather than a positive fraction
    if random_labels:
        assert changed > 0  # some demonstrations show a label other than their own


def test_registered_and_validated():
    assert EVAL_TASKS["icl_classification"].applies_to == {"clm", "span"}
    parsed = validate_config(
        EvaluationConfig,
        {
            "tasks": [
                {"type": "icl_classification", "id": "a", "train_path": "x.csv", "label_words": {0: "bad"}}
            ]
        },
    )
    assert parsed.tasks[0].label_words == {"0": "bad"}
    for bad, message in (
        ({"template": "{text} is {label} {text}"}, r"\{text\} exactly once"),
        ({"template": "{label} {text}"}, "must end with"),
        ({"template": "{text} {text_pair} {label}"}, "columns.text_pair is not set"),
        ({"num_orderings": 2}, "at least 3"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate_config(
                EvaluationConfig, {"tasks": [{"type": "icl_classification", "train_path": "x.csv", **bad}]}
            )
