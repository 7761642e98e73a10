"""PII redaction: each kind replaced and counted, Wikipedia-style numbers left alone, config checks."""

from __future__ import annotations

import ipaddress

import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus.pii import PiiConfig, PiiRedactor, is_public_ip

pytestmark = pytest.mark.unit

NO_PII = {"email": 0, "ip_address": 0, "phone": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to john.doe+news@mail.example.co.uk.", "Write to <EMAIL>."),
        ("(jürgen_m@beispiel.de)", "(<EMAIL>)"),
        ("a@b.io,c@d.org", "<EMAIL>,<EMAIL>"),
    ],
)
def test_emails_are_redacted(text, expected):
    new_text, counts = PiiRedactor().redact(text)
    assert new_text == expected
    assert counts == {**NO_PII, "email": expected.count("<EMAIL>")}


@pytest.mark.parametrize(
    "text",
    ["user@localhost", "follow @handle", "a@b.c", "price: 5 @ 3.00", "mail@example.123"],
)
def test_email_lookalikes_are_kept(text):
    assert PiiRedactor().redact(text) == (text, NO_PII)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 8.8.8.8, then", "from <IP_ADDRESS>, then"),
        ("host 93.184.216.34.", "host <IP_ADDRESS>."),
        ("v6 2606:4700:4700::1111 up", "v6 <IP_ADDRESS> up"),
        ("full 2a00:1450:4001:0829:0000:0000:0000:200e", "full <IP_ADDRESS>"),
    ],
)
def test_public_ips_are_redacted(text, expected):
    new_text, counts = PiiRedactor().redact(text)
    assert new_text == expected
    assert counts == {**NO_PII, "ip_address": 1}


PRIVATE_IPS = "lan 192.168.1.1 lo 127.0.0.1 ten 10.0.0.7 doc 192.0.2.5 v6 ::1 fe80::1 mc 224.0.0.1 fd00::5"


def test_non_public_ips_are_kept_unless_configured():
    assert PiiRedactor().redact(PRIVATE_IPS) == (PRIVATE_IPS, NO_PII)
    new_text, counts = PiiRedactor(PiiConfig(redact_private_ips=True)).redact(PRIVATE_IPS)
    assert counts["ip_address"] == 8
    assert "192.168" not in new_text and "::1" not in new_text


def test_is_public_ip_against_ipaddress():
    for candidate in ["8.8.8.8", "10.1.2.3", "172.16.0.1", "100.64.0.1", "2001:db8::1", "2606:4700::1"]:
        address = ipaddress.ip_address(candidate)
        assert is_public_ip(candidate) == (address.is_global and not address.is_multicast)
    assert not is_public_ip("a::b")  # Python calls 000a:: global; it is in reserved ::/8
    assert not is_public_ip("256.1.1.1")
    assert not is_public_ip("12:30:45")


@pytest.mark.parametrize(
    "number",
    [
        "(555) 234-5678",
        "555-234-5678",
        "555.234.5678",
        "1-800-555-0199",
        "+1 555 234 5678",
        "+44 20 7946 0958",
        "+49 (0)30 123456",
        "+33 1 23 45 67 89",
        "+7 495 123-45-67",
    ],
)
def test_phones_are_redacted(number):
    new_text, counts = PiiRedactor().redact(f"Call {number} today.")
    assert new_text == "Call <PHONE> today."
    assert counts == {**NO_PII, "phone": 1}


# Numbers Wikipedia is full of; none of them is PII.
WIKIPEDIA_NUMBERS = [
    "He reigned 1990–2000 and 1990-2000.",
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2, ISSN 0317-8471.",
    "Born 1990-09-28; died 28.09.2015; on 9/11/2001.",
    "Linux version 2.6.32.1 and Python 3.11.4 and v1.2.3.4.",
    "LAN Driver 14.0.1.0 (Ver. 4.23.0.0)",
    "Located at 51.5074° N, 0.1278° W (51.5074; -0.1278).",
    "Population 1,234,567 in 2011 (up from 1 234 567), area 12.345 km2.",
    "Scores 250 300 2010 and 555 234 5678 in the table.",
    "Changes +1.12 0.45 0.67 and +15 °C and +3.5%.",
    "Pages 123-456, route 555-2345, 10:30:45 and std::vector and a::b.",
    "",
    "   \n\t",
    "Ünïcödé text without numbers ✓ 日本語",
]


@pytest.mark.parametrize("text", WIKIPEDIA_NUMBERS)
def test_wikipedia_numbers_are_kept(text):
    assert PiiRedactor().redact(text) == (text, NO_PII)


def test_all_kinds_counted_together_and_custom_placeholders():
    text = "Mail a@b.com or call 555-234-5678 from 8.8.8.8; x@y.org again."
    new_text, counts = PiiRedactor().redact(text)
    assert new_text == "Mail <EMAIL> or call <PHONE> from <IP_ADDRESS>; <EMAIL> again."
    assert counts == {"email": 2, "ip_address": 1, "phone": 1}
    config = PiiConfig(kinds=["phone"], phone_placeholder="[tel]")
    new_text, counts = PiiRedactor(config).redact(text)
    assert new_text == "Mail a@b.com or call [tel] from 8.8.8.8; x@y.org again."
    assert counts == {"phone": 1}


def test_config_validation():
    with pytest.raises(ConfigError, match="kinds"):
        validate_config(PiiConfig, {"kinds": ["email", "credit_card"]})
    with pytest.raises(ConfigError, match="twice"):
        validate_config(PiiConfig, {"kinds": ["email", "email"]})
    with pytest.raises(ConfigError, match="kinds"):
        validate_config(PiiConfig, {"kinds": []})
    with pytest.raises(ConfigError, match="did you mean 'email_placeholder'"):
        validate_config(PiiConfig, {"email_placholder": "<E>"})
