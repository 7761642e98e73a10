"""Pretrain config validation, the DeepSpeed config it produces, and driver-side input checks."""

from __future__ import annotations

import json

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.training import OBJECTIVES, MaskingConfig, ModelConfig, PretrainConfig, get_objective
from lmforge.training.deepspeed_setup import deepspeed_config
from lmforge.training.inputs import resolve_inputs, tokenizer_info
from lmforge.training.precision import DeviceProbe

pytestmark = pytest.mark.unit


def test_presets_and_overrides():
    assert ModelConfig(size="small").resolve().model_dump() == {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "intermediate_size": 1024,
        "dropout": 0.0,
    }
    shape = ModelConfig(size="tiny", num_layers=3, intermediate_size=200).resolve()
    assert (shape.hidden_size, shape.num_layers, shape.intermediate_size) == (128, 3, 200)
    with pytest.raises(ConfigError, match="custom"):
        validate_config(ModelConfig, {"size": "custom", "hidden_size": 32})
    with pytest.raises(ConfigError, match="divisible"):
        validate_config(ModelConfig, {"hidden_size": 66, "num_heads": 4})


def test_invalid_values_name_the_key():
    with pytest.raises(ConfigError, match="objective.*did you mean 'clm'"):
        validate_config(PretrainConfig, {"objective": "clmm"})
    with pytest.raises(ConfigError, match="replace_with_mask"):
        validate_config(MaskingConfig, {"replace_with_mask": 0.95, "replace_with_random": 0.1})
    with pytest.raises(ConfigError, match="zero_stage"):
        validate_config(PretrainConfig, {"zero_stage": 4})
    with pytest.raises(ConfigError, match="micro_batchsize"):
        validate_config(PretrainConfig, {"micro_batchsize": 4})
    with pytest.raises(ConfigError, match="warmup_steps"):
        validate_config(PretrainConfig, {"warmup_steps": 300, "max_steps": 200})


def test_errors_inside_the_pipeline_config_name_the_section():
    from lmforge.app.config import PipelineConfig

    base = {"name": "x", "corpus": {"sources": [{"path": "a.txt"}]}}
    with pytest.raises(ConfigError, match=r"pretrain:.*warmup_steps \(300\) exceeds max_steps"):
        validate_config(PipelineConfig, {**base, "pretrain": {"warmup_steps": 300, "max_steps": 200}})
    with pytest.raises(ConfigError, match=r"pretrain\.model:.*custom"):
        validate_config(PipelineConfig, {**base, "pretrain": {"model": {"size": "custom"}}})


def test_objectives_registry():
    assert OBJECTIVES.names() == ["clm", "mlm", "mlm_nsp", "mlm_sop", "span"]
    assert get_objective("clm").packing == "clm" and get_objective("mlm").packing == "mlm"
    assert get_objective("mlm_nsp").packing == get_objective("mlm_sop").packing == "pair"
    assert get_objective("span").packing == "span"
    assert get_objective("mlm").auto_model_class == "AutoModelForMaskedLM"
    assert get_objective("mlm_sop").auto_model_class == "AutoModelForPreTraining"
    assert get_objective("span").auto_model_class == "AutoModelForSeq2SeqLM"


def test_span_packing_options_and_pipeline_checks():
    # T5's published lengths: 568 raw tokens corrupt to 512 encoder inputs and 114 targets.
    assert get_objective("span").packing_options(PretrainConfig(objective="span"), 512) == {
        "raw_length": 568,
        "target_length": 114,
    }
    assert get_objective("clm").packing_options(PretrainConfig(), 512) == {}
    from lmforge.app.config import PipelineConfig

    base = {"name": "x", "corpus": {"sources": [{"path": "a.txt"}]}, "pretrain": {"objective": "span"}}
    with pytest.raises(ConfigError, match="sentinel tokens.*'bpe'.*unigram"):
        validate_config(PipelineConfig, {**base, "tokenizer": {"algorithm": "bpe"}})
    with pytest.raises(ConfigError, match="tokenizer.sentinels 2 is fewer than the 7 noise spans"):
        validate_config(
            PipelineConfig,
            {**base, "tokenizer": {"algorithm": "unigram", "sentinels": 2}, "shard": {"seq_len": 128}},
        )
    validate_config(
        PipelineConfig, {**base, "tokenizer": {"algorithm": "unigram"}, "shard": {"seq_len": 128}}
    )


def test_deepspeed_config_uses_the_resolved_precision():
    config = PretrainConfig(micro_batch_size=4, gradient_accumulation_steps=3, zero_stage=2)
    assert config.precision == "auto"  # resolved per machine by training.precision
    ds = deepspeed_config(config, world_size=2, precision="bf16")
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3 and ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert "optimizer" not in ds and "scheduler" not in ds  # client AdamW + LambdaLR
    fp32 = deepspeed_config(config, world_size=2, precision="fp32")
    assert not fp32["bf16"]["enabled"] and not fp32["fp16"]["enabled"]


def save_tokenizer(directory, meta: dict | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(directory)
    if meta is not None:
        (directory / "lmforge_tokenizer.json").write_text(json.dumps(meta))


def write_manifest(directory, packing: str):
    shards = [{"path": "train-00000.parquet", "split": "train"}, {"path": "v.parquet", "split": "validation"}]
    (directory / "dataset_manifest.json").write_text(
        json.dumps({"packing": packing, "seq_len": 8, "shards": shards})
    )


def test_tokenizer_info_reads_meta_and_falls_back(tmp_path):
    save_tokenizer(
        tmp_path, {"algorithm": "wordpiece", "vocab_size": 10, "special_ids": {"mask": 4, "eos": None}}
    )
    vocab_size, special_ids = tokenizer_info(tmp_path)
    assert vocab_size == 10  # the meta may reserve more ids than the tokenizer lists
    assert special_ids == {"mask": 4, "pad": 0, "unk": 1, "cls": 2, "sep": 3}


def test_resolve_inputs_checks_packing_and_special_tokens(tmp_path):
    tokenizer_dir, shards_dir = tmp_path / "tok", tmp_path / "shards"
    tokenizer_dir.mkdir(), shards_dir.mkdir()
    save_tokenizer(tokenizer_dir, None)  # no [MASK], no meta file
    write_manifest(shards_dir, "clm")
    with pytest.raises(ConfigError, match="mlm.*dataset_manifest.json.*packing='clm'"):
        resolve_inputs(PretrainConfig(objective="mlm"), shards_dir, tokenizer_dir, 0)
    write_manifest(shards_dir, "mlm")
    with pytest.raises(ConfigError, match="mask"):
        resolve_inputs(PretrainConfig(objective="mlm"), shards_dir, tokenizer_dir, 0)
    write_manifest(shards_dir, "clm")
    inputs = resolve_inputs(PretrainConfig(objective="clm"), shards_dir, tokenizer_dir, 3, probe=amx_cpu)
    assert (inputs.vocab_size, inputs.seq_len, inputs.seed) == (7, 8, 3)
    assert (inputs.precision, inputs.precision_reason) == ("bf16", "auto: CPU has amx_bf16, native bf16")


def amx_cpu(measure_bf16: bool) -> DeviceProbe:
    return DeviceProbe("cpu", cpu_flags=frozenset({"avx512f", "amx_bf16"}))


def test_worker_resources_default_and_explicit():
    assert PretrainConfig(cpus_per_worker=2).worker_resources(use_gpu=False) == {"CPU": 2.0}
    assert PretrainConfig().worker_resources(use_gpu=True) == {"CPU": 1.0, "GPU": 1.0}
    explicit = PretrainConfig(use_gpu=True, resources_per_worker={"CPU": 4, "GPU": 0.5, "fast_disk": 1})
    assert explicit.worker_resources(use_gpu=True) == {"CPU": 4.0, "GPU": 0.5, "fast_disk": 1.0}
    assert explicit.threads_per_worker == 4
    # Without a CPU key the worker still reserves cpus_per_worker.
    assert PretrainConfig(resources_per_worker={"fast_disk": 1}).worker_resources(False) == {
        "CPU": 1.0,
        "fast_disk": 1.0,
    }
    assert PretrainConfig(resources_per_worker={"CPU": 0.5}).threads_per_worker == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"use_gpu": True, "resources_per_worker": {"CPU": 1}}, r"resources_per_worker\.GPU is 0\.0 .*GPU"),
        ({"use_gpu": True, "resources_per_worker": {"GPU": 0}}, r"resources_per_worker\.GPU is 0\.0"),
        ({"use_gpu": False, "resources_per_worker": {"GPU": 1}}, r"resources_per_worker\.GPU is 1\.0 .*CPU"),
        ({"resources_per_worker": {"CPU": 0}}, r"resources_per_worker\.CPU: .*above 0"),
        ({"resources_per_worker": {"memory": -1}}, r"resources_per_worker\.memory: must not be negative"),
        (
            {"resources_per_worker": {"CPU": 2}, "cpus_per_worker": 1},
            r"resources_per_worker\.CPU .*cpus_per_worker",
        ),
        ({"placement_strategy": "SPREAD_OUT"}, r"placement_strategy"),
    ],
)
def test_inconsistent_worker_resources_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(PretrainConfig, values)


def test_auto_gpu_resources_are_checked_once_resolved():
    from lmforge.training.launcher import worker_resources

    config = PretrainConfig(resources_per_worker={"CPU": 1})  # use_gpu auto: fine until resolved
    assert worker_resources(config, use_gpu=False) == {"CPU": 1.0}
    with pytest.raises(ConfigError, match=r"pretrain\.resources_per_worker\.GPU is 0\.0"):
        worker_resources(config, use_gpu=True)


def test_scaling_fields_are_operational():
    from lmforge.core.configbase import identity_view

    recipe = identity_view(PretrainConfig(resources_per_worker={"CPU": 2}, placement_strategy="SPREAD"))
    assert "resources_per_worker" not in recipe and "placement_strategy" not in recipe
    assert recipe == identity_view(PretrainConfig())


def test_budget_and_pair_objective_checks():
    budgeted = PretrainConfig(objective="clm", compute_budget_flops=1e12)
    # A dumped config carries max_steps at its default: it reloads (a job file, a release, a flow parameter).
    assert PretrainConfig.model_validate(budgeted.model_dump(mode="json")).compute_budget_flops == 1e12
    with pytest.raises(ValueError, match="set max_steps or compute_budget_flops, not both"):
        PretrainConfig(compute_budget_flops=1e12, max_steps=50)
    with pytest.raises(ValueError, match="micro_batch_size must be at least 2"):
        PretrainConfig(objective="mlm_nsp", micro_batch_size=1)
    with pytest.raises(ValueError, match="masking.dynamic false with objective 'mlm_sop'"):
        PretrainConfig(objective="mlm_sop", masking=MaskingConfig(dynamic=False))
    assert not PretrainConfig(objective="mlm", masking=MaskingConfig(dynamic=False)).masking.dynamic


def test_device_choices_resolve_auto_for_the_device_and_length():
    config = PretrainConfig()
    assert config.device_choices(False, 256) == {
        "compile": False,
        "attention": "eager",
        "vocab_multiple_of": 1,
    }
    assert config.device_choices(False, 2048)["attention"] == "sdpa"  # past eager's range on CPU
    assert config.device_choices(True, 256) == {"compile": True, "attention": "sdpa", "vocab_multiple_of": 64}
    chosen = PretrainConfig(compile=True, attention="eager", vocab_multiple_of=8)
    assert chosen.device_choices(True, 256) == chosen.device_choices(False, 256)
