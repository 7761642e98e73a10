"""Fill-mask probes: the pipeline's top k against a softmax of the model's logits, the Markdown
table, and probe validation."""

from __future__ import annotations

import json
import re

import pytest
import torch
from pydantic import ValidationError

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.tasks.config import FILL_MASK_PROBES, EvaluationConfig, FillMaskProbesConfig
from lmforge.tasks.fill_mask import MARKDOWN_FILE, fill_mask_predictions, markdown_table, run_fill_mask_probes
from lmforge.tasks.modeling import load_model, load_tokenizer, spare_token_ids
from tests.unit.test_tasks_pseudo_perplexity import build_debug_bert

pytestmark = pytest.mark.unit

PROBES = ["the european {mask} is a species of clawed lobster .", "a funny , moving and {mask} acted story"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_debug_bert(tmp_path_factory.mktemp("bert") / "model")


def test_predictions_equal_the_softmax_at_the_mask(bert_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    metrics = run_fill_mask_probes(
        FillMaskProbesConfig(probes=PROBES), bert_dir, None, None, tmp_path, seed=0
    )
    model, tokenizer = load_model(AutoModelForMaskedLM, bert_dir), load_tokenizer(bert_dir)
    sentence = PROBES[0].replace("{mask}", "[MASK]")
    input_ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[input_ids == tokenizer.mask_token_id]
    scores, token_ids = torch.softmax(logits[0].double(), -1).topk(5)
    first = metrics["probes"][0]
    assert first["probe"] == PROBES[0] and first["sentence"] == sentence
    assert [p["token_str"] for p in first["predictions"]] == [
        tokenizer.decode([i]) for i in token_ids.tolist()
    ]
    assert [p["score"] for p in first["predictions"]] == pytest.approx(scores.tolist(), rel=1e-5)
    assert [p["probe"] for p in metrics["probes"]] == PROBES
    assert all(len(p["predictions"]) == 5 for p in metrics["probes"])


def test_outputs_are_deterministic_and_hold_the_table(bert_dir, tmp_path):
    config = FillMaskProbesConfig(top_k=3)
    first = run_fill_mask_probes(config, bert_dir, None, None, tmp_path / "a", seed=0)
    run_fill_mask_probes(config, bert_dir, None, None, tmp_path / "b", seed=1)
    for name in ("metrics.json", MARKDOWN_FILE):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved == {key: value for key, value in first.items() if key != "seconds"}
    assert saved["config"] == {
        "type": "fill_mask_probes",
        "id": "fill_mask_probes",
        "probes": list(FILL_MASK_PROBES),
        "top_k": 3,
    }
    table = (tmp_path / "a" / MARKDOWN_FILE).read_text().splitlines()
    assert table[0] == "| Probe | 1 | 2 | 3 |" and len(table) == 2 + len(FILL_MASK_PROBES)
    best = first["probes"][0]["predictions"][0]
    assert table[2].startswith(f"| {FILL_MASK_PROBES[0]} | {best['token_str']} ({best['score']:.4f}) |")


def test_markdown_escapes_pipes():
    results = [{"probe": "a | b {mask}", "predictions": [{"token_str": "|", "score": 0.5}]}]
    assert markdown_table(results, 2).splitlines()[2] == "| a \\| b {mask} | \\| (0.5000) |  |"


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        (["The capital of France is Paris."], "probe 0 must contain {mask} exactly once (found 0)"),
        (["{mask} is the capital of {mask}."], "probe 0 must contain {mask} exactly once (found 2)"),
        (["a {mask}", "a {mask}"], "probes must be distinct; repeated: ['a {mask}']"),
        ([], "at least 1 item"),
    ],
)
def test_probes_need_exactly_one_mask(probes, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        FillMaskProbesConfig(probes=probes)


def test_config_error_names_the_probe_key():
    raw = {"tasks": [{"name": "fill_mask_probes", "probes": ["ok {mask}", "no placeholder"]}]}
    with pytest.raises(
        ConfigError, match=r"tasks\.0\.probes: Value error, probe 1 must contain \{mask\} exactly once"
    ):
        validate_config(EvaluationConfig, raw)
    assert all(probe.count("{mask}") == 1 for probe in FillMaskProbesConfig().probes)


def test_a_padded_tables_spare_ids_never_reach_the_top_k(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.unit.test_tasks_support import build_tiny_gpt2

    exact_dir = build_tiny_gpt2(tmp_path / "exact")
    padded_dir = build_tiny_gpt2(tmp_path / "padded", vocab_multiple_of=64)
    tokenizer = load_tokenizer(padded_dir)
    assert spare_token_ids(AutoModelForCausalLM.from_pretrained(exact_dir), tokenizer) is None
    spare = spare_token_ids(AutoModelForCausalLM.from_pretrained(padded_dir), tokenizer)
    assert spare and spare[0] == len(tokenizer) and (spare[-1] + 1) % 64 == 0

    # A pipeline whose best candidates are spare ids: they are dropped and top_k still filled.
    def pipe(sentence, top_k):
        ranked = [spare[0], 5, spare[1], 7, 9, 11][:top_k]
        return [
            {"token": i, "token_str": f"t{i}", "score": 1.0 / (rank + 1)} for rank, i in enumerate(ranked)
        ]

    [top] = fill_mask_predictions(pipe, ["x"], top_k=3, spare_ids=spare)
    assert [item["token_str"] for item in top] == ["t5", "t7", "t9"]
    [top] = fill_mask_predictions(pipe, ["x"], top_k=3)
    assert [item["token_str"] for item in top] == [f"t{spare[0]}", "t5", f"t{spare[1]}"]


def test_sampled_generation_never_picks_a_padded_tables_spare_ids(tmp_path):
    from transformers import AutoModelForCausalLM

    from lmforge.tasks.config import GenerationSamplesConfig
    from lmforge.tasks.samples import sample_outputs
    from tests.unit.test_tasks_support import build_tiny_gpt2

    model_dir = build_tiny_gpt2(tmp_path / "padded", vocab_multiple_of=64)
    (model_dir / "lmforge_pretrain.json").write_text(json.dumps({"objective": "clm"}))
    tokenizer, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    spare = spare_token_ids(model, tokenizer)
    assert spare
    # Rig the model so that the spare ids are its most likely tokens everywhere: a constant final
    # state (ln_f weight 0, bias 1) and spare rows pointing along it (the head is tied to them).
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[spare] = 10.0
    model.save_pretrained(model_dir)

    config = GenerationSamplesConfig(prompts=["the lobster {mask}"], top_k=5, max_new_tokens=4)
    [sample] = sample_outputs(config, model_dir, seed=0)
    # Spare ids decode to nothing; suppressed, the four new tokens are real ones.
    generated = tokenizer(sample["output"], add_special_tokens=False)["input_ids"]
    assert sample["output"] and all(i < len(tokenizer) for i in generated)
