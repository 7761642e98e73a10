"""Deterministic train/validation assignment of documents."""

from __future__ import annotations

import hashlib

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)


def split_of(doc_id: str, validation_fraction: float, seed: int) -> str:
    """`"validation"` for about `validation_fraction` of documents, else `"train"`.

    A function of (seed, doc_id) only, so a document lands in the same split in every run, every
    process and every position of the corpus, and never in both.
    """
    # sha256, not hash(): Python's string hash is salted per process.
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return VALIDATION if position < validation_fraction else TRAIN
