"""Tests for tuneforge.data.pii: typed PII redaction with checksum validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.data.pii import PII_TYPES, redact

PLACEHOLDERS = {kind: f"<{kind}>" for kind in PII_TYPES}


def assert_redacted(value: str, kind: str) -> None:
    text = f"before {value} after"
    out, counts = redact(text)
    assert out == f"before <{kind}> after", (value, out)
    assert counts == {kind: 1}, (value, counts)


def assert_untouched(text: str) -> None:
    out, counts = redact(text)
    assert out == text, (text, out)
    assert counts == {}, (text, counts)


# --- API --------------------------------------------------------------------


def test_pii_types():
    assert PII_TYPES == ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain words only, nothing to see here.",
        "Numbers like 42 and 2024 are fine.",
        "ratio 3:2, time 10:30, version 1.2.3",
        "Ünïcödé tëxt ✓ 日本語",
    ],
)
def test_text_without_pii_is_returned_identical(text):
    out, counts = redact(text)
    assert out is text
    assert counts == {}


# --- EMAIL ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "john.doe@example.com",
        "first.last+tag@sub.example.co.uk",
        "user_99%x@mail-server.org",
        "A.B@EXAMPLE.IO",
    ],
)
def test_email_redacted(value):
    assert_redacted(value, "EMAIL")


@pytest.mark.parametrize(
    "text",
    [
        "ping @handle on the forum",
        "user@localhost is not routable",
        "an @ sign alone",
        "decorator @property def x(self)",
    ],
)
def test_email_negatives(text):
    assert_untouched(text)


def test_email_at_sentence_end():
    assert redact("Write to a@b.com.") == ("Write to <EMAIL>.", {"EMAIL": 1})


# --- CARD -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1111",  # Visa test number, spaces
        "4111-1111-1111-1111",  # dashes
        "4111111111111111",  # solid
        "5500 0000 0000 0004",  # Mastercard
        "3782 822463 10005",  # Amex 4-6-5
        "378282246310005",  # Amex solid
        "6011111111111117",  # Discover
        "4222222222222",  # 13-digit Visa
    ],
)
def test_card_redacted(value):
    assert_redacted(value, "CARD")


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn
        "card 4111111111111112",  # fails Luhn, solid
        "order 1234567890123456 shipped",  # order id, fails Luhn
        "0000 0000 0000 0000 is a dummy",  # passes Luhn, but all zeros
        "pi is 0.4111111111111111",  # Luhn-valid digits after a decimal point
        "id 41111111111111111111111",  # too long (23 digits)
    ],
)
def test_card_negatives(text):
    assert_untouched(text)


def test_card_not_a_window_of_a_longer_grouped_number():
    # Five groups of four: 20 digits, not a card, and no 16-digit window of it
    # is checked on its own.
    assert_untouched("ref 4111 1111 1111 1111 1111")


# --- IBAN -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NO93 8601 1117 947",  # shortest (15)
        "BE68 5390 0754 7034",
    ],
)
def test_iban_redacted(value):
    assert_redacted(value, "IBAN")


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 33",  # bad check digits
        "DE88370400440532013000",  # bad check digits, solid
        "GB82 WEST 1234",  # too short
        "model AB12 CDEF GHIJ KLMN",  # looks grouped, fails mod-97
    ],
)
def test_iban_negatives(text):
    assert_untouched(text)


def test_iban_followed_by_a_four_character_word():
    out, counts = redact("BE68 5390 0754 7034 2024")
    assert out == "<IBAN> 2024"
    assert counts == {"IBAN": 1}


# --- IP ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "192.168.0.1",
        "10.0.0.255",
        "255.255.255.255",
        "0.0.0.0",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "2001:db8::8a2e:370:7334",
        "fe80::1",
        "::1",
        "2001:db8::",
        "::ffff:192.0.2.1",
        "0:0:0:0:0:ffff:192.0.2.1",
    ],
)
def test_ip_redacted(value):
    assert_redacted(value, "IP")


def test_ip_at_sentence_end_and_in_brackets():
    assert redact("Host is 10.1.2.3.") == ("Host is <IP>.", {"IP": 1})
    assert redact("http://[2001:db8::1]:8080/") == ("http://[<IP>]:8080/", {"IP": 1})


@pytest.mark.parametrize(
    "text",
    [
        "999.1.1.1",  # octet > 255
        "1.2.3.256",
        "version 1.2.3",  # three parts
        "1.2.3.4.5",  # five parts
        "v1.2.3.4",  # glued to a word
        "01.02.03.04",  # leading zeros: a date-ish number, not an address
        "meet at 10:30",
        "at 10:30:45 sharp",
        "std::vector<int>::size",
        "MAC 00:1A:2B:3C:4D:5E",
        "add::bead",  # hex letters only, no digits
        "1:2:3:4:5:6:7:8:9",  # nine groups
        "1::2::3",  # two '::'
    ],
)
def test_ip_negatives(text):
    assert_untouched(text)


# --- SSN --------------------------------------------------------------------


def test_ssn_redacted():
    assert_redacted("123-45-6789", "SSN")
    assert_redacted("665-01-0001", "SSN")


@pytest.mark.parametrize(
    "value",
    [
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "900-12-3456",  # area 900-999
        "999-12-3456",
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
    ],
)
def test_ssn_invalid_ranges_untouched(value):
    assert_untouched(f"number {value} here")


def test_ssn_not_part_of_longer_number():
    assert_untouched("code 123-45-6789-12")
    assert_untouched("code 1123-45-6789")


# --- PHONE ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "(555) 123-4567",
        "(555)123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "1-800-555-0199",
        "+1 555 123 4567",
        "+1 (555) 123-4567",
        "+1-555-123-4567",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+49 30 12345678",
        "+33 6 12 34 56 78",
        "+14155552671",
        "020 7946 0958",
        "(020) 7946 0958",
    ],
)
def test_phone_redacted(value):
    assert_redacted(value, "PHONE")


@pytest.mark.parametrize(
    "text",
    [
        "In 2024 and 1999 we grew.",  # years
        "It cost $1,234.56 or 1234.56 EUR.",  # amounts
        "Due 2024-01-15, shipped 15/01/2024, 15.01.2024.",  # dates
        "Order #A12345 and #123456789012 are late.",  # order numbers
        "timestamp 1700000000 and 5551234567",  # unseparated 10-digit runs
        "call 555-1234",  # 7 digits
        "+3.14159265 is a signed decimal",
        "delta +12.5% today",
        "+2024-01-15 in expanded ISO form",
        "score 12-34-5678",  # not 3-3-4
        "+123",  # too few digits
    ],
)
def test_phone_negatives(text):
    assert_untouched(text)


# --- precedence and combinations --------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123-45-6789", "SSN"),  # not a phone
        ("4111-1111-1111-1111", "CARD"),  # not a phone
        ("192.168.100.200", "IP"),  # not a phone
        ("DE89370400440532013000", "IBAN"),  # not a card
        ("555-123-4567@example.com", "EMAIL"),  # not a phone
    ],
)
def test_priority_order(text, expected):
    out, counts = redact(text)
    assert out == f"<{expected}>"
    assert counts == {expected: 1}


def test_multiple_items_and_counts():
    text = (
        "Contact jane@example.com or bob@example.org, phone (555) 123-4567 "
        "or +44 20 7946 0958. Card 4111 1111 1111 1111, IBAN DE89 3704 0044 "
        "0532 0130 00, SSN 123-45-6789, from 10.0.0.1 and fe80::1. "
        "Order #A12345 of 2024-01-15 for 1,234.56."
    )
    out, counts = redact(text)
    assert out == (
        "Contact <EMAIL> or <EMAIL>, phone <PHONE> "
        "or <PHONE>. Card <CARD>, IBAN <IBAN>, SSN <SSN>, from <IP> and <IP>. "
        "Order #A12345 of 2024-01-15 for 1,234.56."
    )
    assert counts == {"EMAIL": 2, "PHONE": 2, "CARD": 1, "IBAN": 1, "IP": 2, "SSN": 1}
    assert list(counts) == [k for k in PII_TYPES if k in counts]


def test_counts_only_types_found():
    _, counts = redact("mail a@b.com and c@d.org")
    assert counts == {"EMAIL": 2}
    assert all(v > 0 for v in counts.values())


def test_neighbours_separated_only_by_a_space_are_both_found():
    # The grouped card is blocked by the phone digits next to it until the
    # phone is replaced; the repeat pass then finds it.
    out, counts = redact("4111 1111 1111 1111 555 123 4567")
    assert out == "<CARD> <PHONE>"
    assert counts == {"CARD": 1, "PHONE": 1}


def test_placeholders_in_input_are_kept():
    text = "already <EMAIL> and <PHONE>, new x@y.com"
    out, counts = redact(text)
    assert out == "already <EMAIL> and <PHONE>, new <EMAIL>"
    assert counts == {"EMAIL": 1}


def test_redacting_twice_changes_nothing():
    once, _ = redact("a@b.com 4111111111111111 123-45-6789")
    twice, counts = redact(once)
    assert twice is once
    assert counts == {}


# --- properties -------------------------------------------------------------

_FRAGMENTS = [
    "4111",
    "1111",
    "0000",
    "555",
    "123",
    "4567",
    "45",
    "6789",
    "DE89",
    "3704",
    "GB82",
    "WEST",
    "192",
    "168",
    "255",
    "999",
    "fe80",
    "db8",
    "a@b.com",
    "@",
    "user",
    "example.com",
    "+1",
    "+44",
    "(555)",
    "(0)",
    "0",
    "1",
    "12",
    "2024",
    "#A12345",
    "<CARD>",
    "<IP>",
]
_SEPARATORS = ["", "", " ", "-", ".", ":", "::", ",", "(", ")", "+", "\n"]

pii_like_text = st.lists(
    st.one_of(st.sampled_from(_FRAGMENTS), st.sampled_from(_SEPARATORS)), max_size=30
).map("".join)

any_text = st.one_of(st.text(max_size=200), pii_like_text)


def _placeholder_delta(before: str, after: str) -> dict[str, int]:
    return {
        kind: after.count(p) - before.count(p)
        for kind, p in PLACEHOLDERS.items()
        if after.count(p) != before.count(p)
    }


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_redact_never_raises_and_is_idempotent(text):
    once, counts = redact(text)
    assert isinstance(once, str)
    assert set(counts) <= set(PII_TYPES)
    assert all(isinstance(v, int) and v > 0 for v in counts.values())
    # every counted item left exactly one placeholder behind
    assert _placeholder_delta(text, once) == counts
    if not counts:
        assert once is text
    twice, counts2 = redact(once)
    assert twice == once
    assert counts2 == {}
