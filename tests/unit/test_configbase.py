"""Strict configs: unknown keys, wrong types and overrides produce messages that name the key."""

from __future__ import annotations

import pytest

from lmforge.core.configbase import StrictModel, apply_override, load_config
from lmforge.core.errors import ConfigError
from lmforge.core.registry import Registry

pytestmark = pytest.mark.unit


class Inner(StrictModel):
    learning_rate: float = 1e-3
    steps: int = 10


class Outer(StrictModel):
    name: str
    inner: Inner = Inner()
    items: list[Inner] = []


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_nearest(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path)
    message = str(info.value)
    assert "inner.lerning_rate" in message and "did you mean 'learning_rate'" in message
    assert str(path) in message


def test_unknown_key_inside_list(tmp_path):
    path = write(tmp_path, "name: x\nitems:\n  - {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"items\.0\.stepz.*did you mean 'steps'"):
        load_config(Outer, path)


def test_wrong_type_and_missing_key(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.steps.*got 'many'"):
        load_config(Outer, write(tmp_path, "name: x\ninner: {steps: many}\n"))
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_config(Outer, write(tmp_path, "inner: {steps: 1}\n"))


def test_overrides_parse_yaml_values(tmp_path):
    config = load_config(
        Outer, write(tmp_path, "name: x\n"), ["inner.steps=7", "inner.learning_rate=0.5", "name=y"]
    )
    assert (config.inner.steps, config.inner.learning_rate, config.name) == (7, 0.5, "y")
    raw = {"items": [{"steps": 1}]}
    apply_override(raw, "items.0.steps=3")
    assert raw == {"items": [{"steps": 3}]}
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_override(raw, "novalue")
    with pytest.raises(ConfigError, match="list index"):
        apply_override(raw, "items.4.steps=3")


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "name: [unclosed\n"))


def test_registry_unknown_name_suggests():
    registry: Registry[int] = Registry("objective")
    registry.register("clm")(1)
    registry.register("mlm")(2)
    assert registry.get("clm") == 1
    with pytest.raises(ConfigError, match="did you mean 'clm'"):
        registry.get("clmm")
    with pytest.raises(ValueError):
        registry.register("clm")(3)


def test_unknown_key_inside_tagged_union_lists_that_members_keys():
    from lmforge.app.config import PipelineConfig
    from lmforge.core.configbase import validate_config

    raw = {
        "name": "x",
        "corpus": {"sources": [{"path": "a.txt"}]},
        "evaluation": {"tasks": [{"name": "wikitext_perplexity", "strid": 3}]},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(PipelineConfig, raw)
    message = str(info.value)
    assert "evaluation.tasks.0.strid" in message and "did you mean 'stride'" in message
