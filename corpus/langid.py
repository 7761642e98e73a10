"""Language identification with py3langid's shipped model (no download at run time).

The score is py3langid's normalized probability (`norm_probs=True`): a softmax over all 140 labels
of the Naive Bayes log-scores of the byte n-grams, divided by the square root of the input's UTF-8
length (py3langid 0.4.0's calibration across lengths). It is computed on the first `max_chars`
characters only, so `max_chars` is part of what the stage computes. Classification always runs over
every label; `languages` only decides what is kept, so a German document is reported as `de`, not
squeezed into `en`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from lmforge.core.configbase import StrictModel

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier as Py3LangidModel

DROP_REASON = "language"
UNDETERMINED = "und"  # empty or whitespace-only text: nothing to classify
# The labels of py3langid 0.4.0's model (139 languages and `zxx`, "not a language"): checked here so a
# config error does not wait for the model to load; a unit test keeps the list equal to the model's.
KNOWN_LANGUAGES = frozenset(
    """ace af am an ar ary arz as az ba bcl be bg bn br bs ca crh cs cy da de dz el en eo es et eu ext
    fa fi fo fr fuv fy ga gcf gcr gd gl gom grc gu gug guw ha hbo he hi hr ht hu hy id ig is it ja jv
    ka kab kik kk km kn ko ku ky la lb lg lij ln lo lt ltg lv mg mk ml mn mr ms mt my ne nl nn no nso
    oc om or pa pcm pl ps pt qu ro ru rw sa sdh se si sk sl sn so sq sr st sv sw ta te tg th tk tl tr
    tt ug uk ur uz uzs vec vi vo wa wuu xh yo yue zh zu zxx""".split()
)


class LanguageIdConfig(StrictModel):
    """Keep documents identified as one of `languages` with a score of at least `min_score`."""

    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_score: float = Field(default=0.65, ge=0.0, le=1.0)
    # Long documents are classified on their start: the cost grows with length, the answer rarely does.
    max_chars: int | None = Field(default=5000, ge=1)

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: list[str]) -> list[str]:
        for code in languages:
            if code not in KNOWN_LANGUAGES:
                close = difflib.get_close_matches(code, sorted(KNOWN_LANGUAGES), n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ValueError(
                    f"unknown language code {code!r}{hint} (py3langid's model knows ISO 639 codes "
                    "such as en, de, fr, zh; zxx is 'not a language')"
                )
        return languages


@functools.cache
def load_model() -> Py3LangidModel:
    """py3langid's shipped model with normalized probabilities, loaded once per process (~2 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageIdentifier:
    """Identifies and checks documents. The model is a per-process cache loaded on first use, not an
    attribute, so instances pickle cheaply to Ray workers."""

    def __init__(self, config: LanguageIdConfig | None = None) -> None:
        self.config = config or LanguageIdConfig()
        self._languages = frozenset(self.config.languages)

    def identify(self, text: str) -> tuple[str, float]:
        """(language code, normalized probability) of `text`; ("und", 0.0) when it is blank."""
        if self.config.max_chars is not None:
            text = text[: self.config.max_chars]
        if not text.strip():
            return UNDETERMINED, 0.0
        language, score = load_model().classify(text)
        return str(language), float(score)

    def identify_batch(self, texts: Iterable[str]) -> list[tuple[str, float]]:
        return [self.identify(text) for text in texts]

    def check(self, text: str) -> tuple[str | None, str, float]:
        """(drop reason or None, language, score): drops unless the language is wanted and scores enough."""
        language, score = self.identify(text)
        keep = language in self._languages and score >= self.config.min_score
        return (None if keep else DROP_REASON), language, score
