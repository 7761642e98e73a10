"""Text normalization applied to every document before filtering and dedup."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

NormalizationForm = Literal["NFC", "NFKC", "NFD", "NFKD"]

# C0/C1 control characters except \t (becomes a space below) and \n (kept: paragraphs matter), plus
# U+FEFF, a byte-order mark left at the start of files (or mid-text where files were concatenated).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
# Any whitespace run that is not a newline: tabs, NBSP left by NFC, ideographic spaces, ...
_INLINE_SPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: NormalizationForm = "NFKC") -> str:
    """Unicode-normalize, drop control characters, collapse spaces and blank-line runs, strip lines."""
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _CONTROL.sub("", text)
    text = _INLINE_SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
