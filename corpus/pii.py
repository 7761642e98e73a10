"""PII redaction: e-mail addresses, IP addresses and phone numbers become placeholders, counted per kind.

Semantics follow datatrove's `PIIFormatter` (regex candidates, then a validator: only publicly routable
IP addresses are personal) with placeholders instead of dummy values, plus phone numbers, which
datatrove does not handle. Phones are matched conservatively, because Wikipedia text is full of
years, ranges, ISBNs, dates and coordinates: a North American number needs separators in the usual
places, and any other number needs a leading `+` country code (E.164: 8 to 15 digits). National
formats without `+` (`020 7946 0958`) are not redacted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.configbase import StrictModel

PiiKind = Literal["email", "ip_address", "phone"]
ALL_KINDS: tuple[PiiKind, ...] = ("email", "ip_address", "phone")

EMAIL = re.compile(
    # The domain needs a dot and a top-level label of 2+ letters, so `user@host` and `@handle` stay.
    r"(?<![\w.+-])[\w+-]+(?:\.[\w+-]+)*@[^\W_][\w-]*(?:\.[^\W_][\w-]*)*\.[^\W\d_]{2,}(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
# A loose candidate (hex groups with 2 to 7 colons, an optional dotted IPv4 tail); `ipaddress` decides.
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:\.\d{1,3}\.\d{1,3}\.\d{1,3})?(?![\w:]|\.\d)"
)
PHONE = re.compile(
    r"(?<![\w+.\-/])(?:"
    # North American, area code [2-9]XX: "(NXX) XXX-XXXX", or "NXX-XXX-XXXX" / "NXX.XXX.XXXX" with one
    # separator used twice; optional +1 / 1 prefix. Space-only "NXX XXX XXXX" looks like a table row.
    r"(?:\+?1[ .-]?)?(?:\([2-9]\d\d\)[ ]?\d{3}[ .-]|[2-9]\d\d(?P<sep>[.-])\d{3}(?P=sep))\d{4}"
    # International: +CC (no leading 0) then 2 to 6 digit groups split by space or hyphen; one group
    # may be parenthesized, "(0)30". Dots are left out: "+1.12 0.45 0.67" is a row of numbers.
    r"|\+[1-9]\d{0,2}(?:[ -]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"
    r")(?![\w]|[.\-/]\d)"
)
_VERSION_CONTEXT = re.compile(r"\b(?:version|ver\.|v\.?)\s*$", re.IGNORECASE)
PHONE_DIGITS = (8, 15)
_DIGIT_OR_AT = re.compile(r"[\d@]")


class PiiConfig(StrictModel):
    """Which kinds to redact and their placeholders.

    `redact_private_ips`: also redact private, loopback, link-local, reserved, documentation and
    multicast addresses; by default only globally routable addresses are personal (datatrove's
    `only_remove_public_ips`).
    """

    kinds: list[PiiKind] = Field(default_factory=lambda: list(ALL_KINDS), min_length=1)
    email_placeholder: str = "<EMAIL>"
    ip_address_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"
    redact_private_ips: bool = False

    @model_validator(mode="after")
    def _kinds_once(self) -> PiiConfig:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds {self.kinds} names a kind twice")
        return self


def is_public_ip(candidate: str) -> bool:
    """Whether `candidate` parses as an IP address that is globally routable, not multicast or reserved
    (for IPv6 that leaves 2000::/3, global unicast, less its special-purpose blocks)."""
    address = _parse_ip(candidate)
    if address is None:
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _parse_ip(candidate: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _phone_digits_ok(candidate: str) -> bool:
    num_digits = sum(char.isdigit() for char in candidate)
    return PHONE_DIGITS[0] <= num_digits <= PHONE_DIGITS[1]


def _looks_like_version(match: re.Match[str]) -> bool:
    """Software versions look like IPv4 addresses: "version 2.6.32.1", "Ver. 4.23.0.0", "Driver
    14.0.1.0". Skipped: a match after a version word, and an IPv4 address ending in .0 (a network
    address, not a host's)."""
    start = match.start()
    if _VERSION_CONTEXT.search(match.string[max(0, start - 16) : start]) is not None:
        return True
    return "." in match.group(0) and match.group(0).endswith(".0")


class PiiRedactor:
    """Redacts one document at a time; build once per worker and reuse."""

    def __init__(self, config: PiiConfig | None = None) -> None:
        self.config = config or PiiConfig()
        validate_ip = (
            (lambda text: _parse_ip(text) is not None) if self.config.redact_private_ips else is_public_ip
        )
        # Order matters: e-mail domains may hold digits, and an IPv4 address is never a phone number.
        passes: list[tuple[PiiKind, re.Pattern[str], Callable[[str], bool] | None, Callable[[str], bool]]] = [
            ("email", EMAIL, None, lambda text: "@" in text),
            ("ip_address", IPV4, validate_ip, lambda text: "." in text),
            ("ip_address", IPV6, validate_ip, lambda text: "::" in text or text.count(":") >= 7),
            ("phone", PHONE, _phone_digits_ok, lambda text: True),
        ]
        self._passes = [step for step in passes if step[0] in self.config.kinds]
        self._placeholders: dict[PiiKind, str] = {
            "email": self.config.email_placeholder,
            "ip_address": self.config.ip_address_placeholder,
            "phone": self.config.phone_placeholder,
        }

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """`text` with every match replaced, and the number replaced per configured kind (zeros included)."""
        counts: dict[str, int] = dict.fromkeys(self.config.kinds, 0)
        if _DIGIT_OR_AT.search(text) is None:
            return text, counts  # every kind needs a digit or an @
        for kind, pattern, is_valid, may_match in self._passes:
            if may_match(text):
                text, num_replaced = self._substitute(kind, pattern, is_valid, text)
                counts[kind] += num_replaced
        return text, counts

    def _substitute(
        self, kind: PiiKind, pattern: re.Pattern[str], is_valid: Callable[[str], bool] | None, text: str
    ) -> tuple[str, int]:
        placeholder = self._placeholders[kind]
        num_replaced = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal num_replaced
            found = match.group(0)
            if is_valid is not None and not is_valid(found):
                return found
            if kind == "ip_address" and _looks_like_version(match):
                return found
            num_replaced += 1
            return placeholder

        return pattern.sub(replace, text), num_replaced
