"""Logging for library code. Prefect picks these loggers up through PREFECT_LOGGING_EXTRA_LOGGERS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT_LOGGER = "lmforge"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"


def get_logger(module_name: str) -> logging.Logger:
    """Logger under the `lmforge` root, e.g. get_logger(__name__) -> 'lmforge.corpus.clean'."""
    if module_name == ROOT_LOGGER or module_name.startswith(ROOT_LOGGER + "."):
        return logging.getLogger(module_name)
    return logging.getLogger(f"{ROOT_LOGGER}.{module_name}")


def enable_info_logs() -> None:
    """Let our INFO records through (the root logger's default level is WARNING) unless a level was set."""
    logger = logging.getLogger(ROOT_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


@contextmanager
def log_to_file(path: Path) -> Iterator[Path]:
    """Append every record that reaches the root logger (INFO and up: ours, Prefect's, libraries')
    to `path` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
