"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
import socket

import pytest

from lmforge.training.launcher import DEFAULT_EXTENSIONS_DIR


@pytest.fixture
def single_process_group(monkeypatch):
    import torch.distributed as dist

    with socket.socket() as probe:  # a free port for the one-rank gloo group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(
        "TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    )
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    import deepspeed.comm as ds_dist

    if ds_dist.comm.cdb is None:
        dist.destroy_process_group()
    else:  # DeepSpeed's, which also drops the groups it cached: the next test's group is a new one
        ds_dist.destroy_process_group()
