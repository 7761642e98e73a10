"""Logging for library code. Prefect picks these loggers up through PREFECT_LOGGING_EXTRA_LOGGERS."""

from __future__ import annotations

import logging

ROOT_LOGGER = "lmforge"


def get_logger(module_name: str) -> logging.Logger:
    """Logger under the `lmforge` root, e.g. get_logger(__name__) -> 'lmforge.corpus.clean'."""
    if module_name == ROOT_LOGGER or module_name.startswith(ROOT_LOGGER + "."):
        return logging.getLogger(module_name)
    return logging.getLogger(f"{ROOT_LOGGER}.{module_name}")
