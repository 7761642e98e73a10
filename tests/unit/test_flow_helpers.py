"""Pure helpers of the Prefect flow: artifact keys, metric tables, config parameter, cancellation."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from prefect.exceptions import TerminationSignal

from lmforge.app.config import PipelineConfig
from lmforge.core.errors import ConfigError
from lmforge.flows.pipeline import artifact_key, as_pipeline_config, is_cancellation, key_metrics
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert (
        artifact_key("tiny", "finetune/sst2/pretrained", "progress")
        == "tiny-finetune-sst2-pretrained-progress"
    )
    assert artifact_key("My_Config", "eval/sst2_icl") == "my-config-eval-sst2-icl"
    assert artifact_key("--a--", "", "b") == "a-b"


def test_key_metrics_flattens_scalars_and_drops_curves():
    metrics = {
        "loss": 1.234567891,
        "steps": 40,
        "by_shot": {"0": {"accuracy": 0.5}},
        "loss_curve": [[1, 2.0]],
    }
    assert key_metrics(metrics) == {"loss": "1.23457", "steps": 40, "by_shot.0.accuracy": "0.5"}


def test_config_parameter_is_validated_with_the_config_messages():
    raw = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())
    assert as_pipeline_config(raw).name == "tiny"
    config = PipelineConfig.model_validate(raw)
    assert as_pipeline_config(config) is config
    raw["pretrain"]["max_step"] = 3
    with pytest.raises(ConfigError, match=r"(?s)flow parameter config: .*pretrain.max_step.*max_steps"):
        as_pipeline_config(raw)
    with pytest.raises(ConfigError, match="expected a mapping, got str"):
        as_pipeline_config("configs/tiny.yaml")


def test_cancellation_is_ctrl_c_or_the_runners_sigterm():
    assert is_cancellation(KeyboardInterrupt())
    assert is_cancellation(TerminationSignal(15))
    assert is_cancellation(asyncio.CancelledError())
    assert not is_cancellation(RuntimeError("boom"))
    assert not is_cancellation(SystemExit(1))
