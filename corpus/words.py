"""English words and sentences as datatrove's published filters count them, without spaCy.

datatrove 0.10.1 splits English with a blank spaCy pipeline (its rule tokenizer plus the rule
sentencizer). This module follows the same rules: whitespace chunks; leading and trailing punctuation,
quotes, currency and units split off one at a time; infixes (ellipses, hyphens between letters,
`a/b`, `lower.Upper`, `a,b`) split inside; abbreviations and contractions as exceptions; a sentence
starts at the first non-punctuation token after a sentence-final mark. The exception lists are the
common English ones (contractions, abbreviations, a few emoticons), not spaCy's full table, and the
character classes cover Latin, Greek and Cyrillic letters; `bench/filters_vs_datatrove.py` measures
how often the filters' decisions still differ from datatrove's.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import chain

# Sentence-final marks (the Basic Multilingual Plane part of Unicode's Sentence_Terminal property).
TERMINAL_PUNCTUATION = frozenset(
    "!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡。؝؞࠷࠹࠽࠾។៕៖៙៚᭽᭾⹓⹔"
)
# Characters a "symbol word" consists of only: ASCII punctuation, common typographic marks, C0/C1
# controls other than tab and newline, and the sentence-final marks.
_TYPOGRAPHIC = "—”％１〈、━【「」，】；“《„’∶´．（–？！：～«〉》）。…►»"
_CONTROLS = "".join(map(chr, chain(range(0, 9), range(11, 32), range(127, 160))))
SYMBOL_CHARS = "".join(
    sorted(set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + _TYPOGRAPHIC + _CONTROLS) | TERMINAL_PUNCTUATION)
)

_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = ",:;!?¿؟¡()\\[\\]{}<>_#*&。？！，、；：～·।،۔؛٪"
_ICONS = "\ufffc\ufffd\u00a6\u00a9\u00ae\u00b0\u2100-\u214f\u2190-\u21ff\u2300-\u23ff\u2500-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff"
_CURRENCY = r"US\$|C\$|A\$|[$£€¥฿₽﷼₠-₿]"
_UNITS = (
    r"km[²³]?|m/s|km/h|kmh|mph|mbar|hPa|µm|µg|nm|yd|in|ft|kg|mg|lb|oz|ha|mb|MB|kb|KB|gb|GB|tb|TB|"
    r"dm[²³]?|cm[²³]?|mm[²³]?|m[²³]?|Pa|g|t|T|G|M|K|%"
)
# Cased letters of the Latin (with Vietnamese), Greek and Cyrillic blocks, as character-class members.
_CASED = [
    chr(code)
    for code in chain(range(0x41, 0x250), range(0x370, 0x530), range(0x1E00, 0x1F00))
    if chr(code).isalpha()
]
_LOWER = "".join(char for char in _CASED if char.islower())
_UPPER = "".join(char for char in _CASED if char.isupper())
_AFTER_LETTER = r"(?<=[^\W\d_])"
_AFTER_LETTER_OR_DIGIT = r"(?:(?<=[^\W\d_])|(?<=[0-9]))"
_BEFORE_LETTER = r"(?=[^\W\d_])"

_PREFIX = re.compile(rf"(?:\.\.+|……|…|{_CURRENCY}|\+(?![0-9])|[§%=—–{_PUNCT}{_QUOTES}{_ICONS}])")
_SUFFIX = re.compile(
    rf"(?:\.\.+|……|…|['’][sS]|[—–{_PUNCT}{_QUOTES}{_ICONS}]|(?<=[0-9])\+|(?<=°[FfCcKk])\."
    rf"|(?<=[0-9])(?:{_CURRENCY})|(?<=[0-9])(?:{_UNITS})"
    rf"|(?<=[0-9{_LOWER}%²\-+{_PUNCT}{_QUOTES}])\.|(?<=[{_UPPER}][{_UPPER}])\.)\Z"
)
_INFIX = re.compile(
    rf"\.\.+|…|[{_ICONS}]|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[{_LOWER}{_QUOTES}])\.(?=[{_UPPER}{_QUOTES}])"
    rf"|{_AFTER_LETTER},{_BEFORE_LETTER}|{_AFTER_LETTER_OR_DIGIT}(?:-|–|—|--|---|——|~){_BEFORE_LETTER}"
    rf"|{_AFTER_LETTER_OR_DIGIT}[:<>=/]{_BEFORE_LETTER}"
)
# Lower-case top-level domain, as spaCy's URL pattern: `end.The` is a sentence break, not a host.
_URL = re.compile(
    r"(?:[a-zA-Z][\w+.-]*://|www\.)\S+|[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|info|biz|io|co|uk|us|de)"
    r"(?:[/?#:]\S*)?\Z"
)
# A chunk of letters and digits only, with no exception or unit to split, is one token.
_PLAIN = re.compile(r"[^\W_]+\Z")
_UNIT_AFTER_DIGIT = re.compile(rf"[0-9](?:{_UNITS})\Z")
_TERMINAL = re.compile("[" + re.escape("".join(sorted(TERMINAL_PUNCTUATION))) + "]")


def _abbreviations() -> dict[str, tuple[str, ...]]:
    words = (
        "Mr. Mrs. Ms. Dr. Prof. Rev. Gen. Gov. Sen. Rep. Adm. St. Mt. Jr. Messrs. Bros. Co. co. Corp. "
        "Inc. Ltd. vs. v.s. e.g. E.g. E.G. i.e. I.e. I.E. a.m. p.m. Ph.D. D.C. N.Y. N.J. N.C. N.D. N.H. "
        "N.M. S.C. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. Ala. Ak. Ariz. Ark. "
        "Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Mass. Md. Mich. Minn. "
        "Miss. Mo. Mont. Neb. Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis. ä. ö. ü."
    ).split()
    words += [f"{letter}." for letter in "abcdefghijklmnopqrstuvwxyz"]
    words += [f"{hour}{half}" for hour in range(1, 13) for half in ("a.m.", "p.m.")]
    words += ["and/or", "'s", "'S", "’s", "''", "’’", *_EMOTICONS.split()]
    table: dict[str, tuple[str, ...]] = {word: (word,) for word in words}
    table |= {f"°{unit}.": ("°", unit, ".") for unit in "CFKcfk"}
    for hour in range(1, 13):
        table |= {f"{hour}{half}": (str(hour), half) for half in ("am", "pm")}
    return table


_NEGATABLE = (
    "ai are ca could dare did does do had has have is may might must need ought sha should was were wo would"
)
_PRONOUN_ENDINGS = {
    "i": "'m 'd 'll 've",
    "you we they": "'d 'll 're 've",
    "he she it": "'d 'll 's",
    "that there these those this what where when who why how": "'d 'll 're 's 've",
    "could would should might must": "'ve",
}
# Without the apostrophe these are ordinary words, so they stay whole.
_REAL_WORDS = set("its well were shell hell ill shed wed whore hes thiss lets".split())
_EMOTICONS = ":) :-) :( :-( ): (: :0 ;) ;-) =) =( <3 :D :P :p :-P :/ :'( 8) :] :o XD xD"


def _contractions() -> dict[str, tuple[str, ...]]:
    pairs = [(stem, "n't") for stem in _NEGATABLE.split()]
    for pronouns, endings in _PRONOUN_ENDINGS.items():
        pairs += [(pronoun, ending) for pronoun in pronouns.split() for ending in endings.split()]
    table: dict[str, tuple[str, ...]] = {}
    for stem, ending in pairs:
        for head in (stem, stem.capitalize()):
            for tail in (ending, ending.replace("'", "’")):
                table[head + tail] = (head, tail)
            bare = head + ending.replace("'", "")
            if bare.lower() not in _REAL_WORDS:
                table[bare] = (head, ending.replace("'", ""))
    for word, split in {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta")}.items():
        table[word] = split
        table[word.capitalize()] = (split[0].capitalize(), split[1])
    return table | {"'em": ("'em",), "’em": ("’em",)}


EXCEPTIONS = {**_contractions(), **_abbreviations()}
# Exceptions that stay one token; adjacent pieces spelling one are joined again, as spaCy does.
_WHOLE_EXCEPTIONS = frozenset(word for word, split in EXCEPTIONS.items() if split == (word,)) | {"(;"}


def _tokenize_chunk(chunk: str, out: list[str]) -> None:
    """Append the tokens of one whitespace-free chunk (spaCy's affix loop, then infixes)."""
    special = EXCEPTIONS.get(chunk)
    if special is not None:
        out.extend(special)
        return
    prefixes: list[str] = []
    suffixes: list[str] = []
    core = chunk
    while core:
        size = len(core)
        prefix = _PREFIX.match(core)
        pre_len = prefix.end() if prefix else 0
        if pre_len and core[pre_len:] in EXCEPTIONS:
            prefixes.append(core[:pre_len])
            core = core[pre_len:]
            break
        rest = core[pre_len:] if pre_len else core
        suffix = _SUFFIX.search(rest)
        suf_len = len(rest) - suffix.start() if suffix and suffix.end() > suffix.start() else 0
        if suf_len and core[:-suf_len] in EXCEPTIONS:
            suffixes.append(core[-suf_len:])
            core = core[:-suf_len]
            break
        if pre_len and suf_len and pre_len + suf_len <= size:
            prefixes.append(core[:pre_len])
            suffixes.append(core[-suf_len:])
            core = core[pre_len : size - suf_len]
        elif pre_len:
            prefixes.append(core[:pre_len])
            core = core[pre_len:]
        elif suf_len:
            suffixes.append(core[-suf_len:])
            core = core[:-suf_len]
        if len(core) == size or core in EXCEPTIONS:
            break
    pieces: list[str] = prefixes
    if core:
        _split_infixes(core, pieces)
    pieces.extend(reversed(suffixes))
    out.extend(_merge_exceptions(pieces) if len(pieces) > 1 else pieces)


def _merge_exceptions(pieces: list[str]) -> list[str]:
    # spaCy re-joins adjacent pieces that spell a one-token exception: "(1999):" -> "(", "1999", "):",
    # "id." -> "i", "d.".
    merged: list[str] = []
    for piece in pieces:
        if merged and merged[-1] + piece in _WHOLE_EXCEPTIONS:
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def _split_infixes(core: str, out: list[str]) -> None:
    special = EXCEPTIONS.get(core)
    if special is not None:
        out.extend(special)
        return
    if _URL.match(core):
        out.append(core)
        return
    start = 0
    for match in _INFIX.finditer(core):
        if match.start() == 0:
            continue  # an infix at the very start stays on the next piece, as in spaCy
        if match.start() != start:
            out.append(core[start : match.start()])
        if match.end() != match.start():
            out.append(match.group())
        start = match.end()
    if start < len(core):
        out.append(core[start:])


@lru_cache(maxsize=8)
def split_words(text: str) -> tuple[str, ...]:
    """The tokens of `text` (punctuation tokens included), cached for the filters sharing a text."""
    out: list[str] = []
    plain, unit = _PLAIN.match, _UNIT_AFTER_DIGIT.search
    for chunk in text.split():
        if chunk in EXCEPTIONS:
            out.extend(EXCEPTIONS[chunk])
        elif chunk.isalpha() or (plain(chunk) and not unit(chunk)):
            out.append(chunk)
        elif (head := chunk[:-1]).isalpha() and head not in EXCEPTIONS and _plain_suffix(chunk[-1], head):
            out += (head, chunk[-1])  # the common "word," and "word." (what the full rules give)
        elif chunk[0] in _PLAIN_PREFIXES and (tail := chunk[1:]).isalpha() and tail not in EXCEPTIONS:
            out += (chunk[0], tail)
        else:
            _tokenize_chunk(chunk, out)
    return tuple(out)


_PLAIN_SUFFIXES = frozenset(",;:!?)]}\"'”’“‘»")
_PLAIN_PREFIXES = frozenset("([{\"'“‘«")


def _plain_suffix(last: str, head: str) -> bool:
    # A full stop splits off after a lower-case letter; after an upper-case one the rules depend on
    # the letter before it, so that case takes the full path.
    return last in _PLAIN_SUFFIXES or (last == "." and "a" <= head[-1] <= "z")


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(char).startswith("P") for char in token)


def count_sentences(text: str) -> int:
    """How many sentences spaCy's rule sentencizer finds in `text` (at least 1 for any text)."""
    if not _TERMINAL.search(text, 0, len(text) - 1):
        return 1  # only the last character can end a sentence: one sentence
    count, seen_terminal = 1, False
    for token in split_words(text):
        is_terminal = token in TERMINAL_PUNCTUATION
        if seen_terminal and not is_terminal and not _is_punct(token):
            count += 1
            seen_terminal = False
        elif is_terminal:
            seen_terminal = True
    return count
