"""Language ID with py3langid's shipped model: labels, scores, keep/drop, truncation, config checks."""

from __future__ import annotations

import pickle

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus.langid import (
    KNOWN_LANGUAGES,
    LanguageIdConfig,
    LanguageIdentifier,
    load_model,
)

pytestmark = pytest.mark.unit

ENGLISH = "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean."
GERMAN = "Der Europäische Hummer ist eine Art der Hummer aus dem östlichen Atlantischen Ozean."
FRENCH = "Le homard européen est une espèce de homard de l'océan Atlantique oriental."
JAPANESE = "ヨーロッパロブスターは大西洋東部に生息するロブスターの一種である。"


def test_known_languages_are_the_models_labels():
    assert KNOWN_LANGUAGES == set(load_model().labels)


@pytest.mark.parametrize(
    ("text", "language"),
    [(ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr"), (JAPANESE, "ja"), (ENGLISH.upper(), "en")],
)
def test_identify(text, language):
    found, score = LanguageIdentifier().identify(text)
    assert found == language
    assert 0.9 < score <= 1.0


def test_score_is_a_probability_over_all_labels():
    model = load_model()
    ranked = model.rank(GERMAN)
    assert sum(score for _, score in ranked) == pytest.approx(1.0, abs=1e-3)
    assert LanguageIdentifier().identify(GERMAN) == (ranked[0][0], pytest.approx(ranked[0][1]))


def test_check_keeps_wanted_languages_with_enough_score():
    identifier = LanguageIdentifier()
    assert identifier.check(ENGLISH)[:2] == (None, "en")
    reason, language, score = identifier.check(GERMAN)
    assert (reason, language) == ("language", "de") and score > 0.9
    assert LanguageIdentifier(LanguageIdConfig(languages=["en", "de"])).check(GERMAN)[0] is None


def test_min_score_is_the_threshold():
    _, score = LanguageIdentifier().identify(ENGLISH)
    assert LanguageIdentifier(LanguageIdConfig(min_score=score)).check(ENGLISH)[0] is None
    above = min(1.0, score + 1e-6)
    assert LanguageIdentifier(LanguageIdConfig(min_score=above)).check(ENGLISH)[0] == "language"
    # A lone word is not confidently anything.
    reason, _, low = LanguageIdentifier().check("Hello")
    assert reason == "language" and low < 0.65


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_blank_text_is_undetermined(text):
    assert LanguageIdentifier().identify(text) == ("und", 0.0)
    assert LanguageIdentifier().check(text) == ("language", "und", 0.0)


def test_max_chars_classifies_the_start():
    text = ENGLISH + " " + GERMAN * 40
    assert LanguageIdentifier(LanguageIdConfig(max_chars=len(ENGLISH))).identify(text)[0] == "en"
    assert LanguageIdentifier(LanguageIdConfig(max_chars=None)).identify(text)[0] == "de"
    # Blank within max_chars counts as blank.
    assert LanguageIdentifier(LanguageIdConfig(max_chars=3)).identify("   " + ENGLISH) == ("und", 0.0)


def test_batch_and_pickle():
    identifier = LanguageIdentifier(LanguageIdConfig(languages=["fr"]))
    clone = pickle.loads(pickle.dumps(identifier))
    assert clone.config == identifier.config
    assert [lang for lang, _ in clone.identify_batch([ENGLISH, FRENCH, "🦞🦞"])][:2] == ["en", "fr"]
    assert clone.check(FRENCH)[0] is None


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown language code 'eng'.*did you mean"):
        validate_config(LanguageIdConfig, {"languages": ["eng"]})
    with pytest.raises(ConfigError, match="languages"):
        validate_config(LanguageIdConfig, {"languages": []})
    with pytest.raises(ConfigError, match="min_score"):
        validate_config(LanguageIdConfig, {"min_score": 1.5})
    with pytest.raises(ConfigError, match="max_chars"):
        validate_config(LanguageIdConfig, {"max_chars": 0})
    with pytest.raises(ConfigError, match="did you mean 'min_score'"):
        validate_config(LanguageIdConfig, {"min_scor": 0.5})
