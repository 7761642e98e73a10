"""Which tokens continue the previous token's word, per tokenizer algorithm (for whole-word masking).

A word is a token that does not continue plus the continuation tokens after it. Each algorithm marks
words its own way: WordPiece marks continuations (`##`), byte-level BPE and Metaspace Unigram mark
word starts (`Ġ`, `▁`). For the latter, a token without the marker continues only when it begins with
a letter or digit, so punctuation split off a word ("word" "," / "don" "'t") is a word of its own,
as BERT's pre-tokenizer makes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path

import numpy as np

from lmforge.core.registry import Registry
from lmforge.tokenization.train import TOKENIZER_FILE, load_tokenizer_meta

# Token string -> whether it continues the previous token's word.
CONTINUATION_RULES: Registry[Callable[[str], bool]] = Registry("tokenizer algorithm")

# Byte-level symbols for space, newline and tab: a token starting with one begins a word.
BYTE_LEVEL_WORD_STARTS = ("\u0120", "\u010a", "\u0109")  # Ġ Ċ ĉ
METASPACE = "\u2581"  # ▁


@CONTINUATION_RULES.register("wordpiece")
def _wordpiece_continues(token: str) -> bool:
    return token.startswith("##")


@CONTINUATION_RULES.register("unigram")
def _metaspace_continues(token: str) -> bool:
    return not token.startswith(METASPACE) and token[:1].isalnum()


@CONTINUATION_RULES.register("bpe")
def _byte_level_continues(token: str) -> bool:
    if token.startswith(BYTE_LEVEL_WORD_STARTS):
        return False
    raw = bytes(_byte_level_decoder().get(symbol, 0) for symbol in token)
    if not raw:
        return False
    if 0x80 <= raw[0] <= 0xBF:
        # A UTF-8 continuation byte: the rest of a character the previous token began.
        return True
    text = raw.decode("utf-8", errors="ignore")
    if text and raw.startswith(text[0].encode("utf-8")):
        return text[0].isalnum()
    # A lead byte alone: two-byte leads 0xC3-0xDF open letters (Latin-1 letters through Arabic);
    # 0xC2 (Latin-1 punctuation) and longer leads (mostly punctuation, symbols, CJK) start a word.
    return 0xC3 <= raw[0] <= 0xDF


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable symbol the ByteLevel pre-tokenizer uses -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + shift)
            shift += 1
    return {chr(symbol): byte for byte, symbol in zip(printable, symbols, strict=True)}


def continuation_table(
    vocab: Mapping[str, int], algorithm: str, special_ids: Mapping[str, int] | Iterable[int]
) -> np.ndarray:
    """Bool array [max id + 1]: True where the token continues the previous token's word.

    Special tokens never continue; ids missing from `vocab` are False.
    """
    if algorithm not in CONTINUATION_RULES:
        raise ValueError(CONTINUATION_RULES.unknown_message(algorithm))
    continues = CONTINUATION_RULES.get(algorithm)
    special = set(special_ids.values() if isinstance(special_ids, Mapping) else special_ids)
    table = np.zeros(max(vocab.values(), default=-1) + 1, dtype=bool)
    for token, token_id in vocab.items():
        table[token_id] = token_id not in special and continues(token)
    return table


def continuation_table_for(tokenizer_dir: Path) -> np.ndarray:
    """continuation_table for a directory written by train_tokenizer (tokenizer.json + meta file)."""
    from tokenizers import Tokenizer

    meta = load_tokenizer_meta(tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / TOKENIZER_FILE))
    table = continuation_table(
        tokenizer.get_vocab(with_added_tokens=True), meta["algorithm"], meta["special_ids"]
    )
    # Pad to the full vocabulary so every id the model can see has an entry.
    return np.pad(table, (0, max(0, int(meta["vocab_size"]) - len(table))))
