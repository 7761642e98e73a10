"""A newcomer's first `make demo` without local data and without the hub: the real CLI stops within
seconds with one message naming each data set, the hub name it tried, and LMFORGE_DATA_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
LMFORGE = Path(sys.executable).parent / "lmforge"


def test_demo_without_data_or_hub_stops_at_once_with_one_actionable_message(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("LMFORGE_DATA_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LMFORGE_STORE")
    }
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused
    started = time.monotonic()
    # cwd outside the checkout: no ../shared/data next to it, and nothing may be written there.
    result = subprocess.run(
        [str(LMFORGE), "run", str(REPO_ROOT / "configs" / "demo.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert output.count("lmforge: error:") == 1
    for key, hub_name in [
        ("corpus.sources[0].path", "hf://wikimedia/wikipedia?config=20231101.en&split=train"),
        ("finetune.tasks[0].train_path", "hf://nyu-mll/glue?config=sst2&split=train"),
        ("finetune.tasks[0].dev_path", "hf://nyu-mll/glue?config=sst2&split=validation"),
        ("evaluation.tasks[0].train_path", "hf://nyu-mll/glue?config=sst2&split=train"),
        ("evaluation.tasks[1].path", "hf://Salesforce/wikitext?config=wikitext-2-raw-v1&split=validation"),
        ("corpus.decontamination.eval_sets[0].path", "hf://nyu-mll/glue?config=sst2&split=validation"),
        (
            "corpus.decontamination.eval_sets[1].path",
            "hf://Salesforce/wikitext?config=wikitext-2-raw-v1&split=validation",
        ),
    ]:
        assert f"  {key}: " in output and hub_name in output, key
    assert "http://127.0.0.1:9" in output and "LMFORGE_DATA_DIR=" in output
    assert "enwiki_extract/wiki_*.txt" in output and "wikitext2_raw/valid.txt" in output
    assert list(tmp_path.iterdir()) == [], "nothing may be written before the inputs resolve"
