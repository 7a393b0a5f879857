"""Redact personal data (PII) from training text before it reaches a model.

`redact(text)` replaces each item it finds with a typed placeholder and counts
what it replaced:

* ``<EMAIL>``  local@domain.tld addresses.
* ``<IBAN>``   bank account numbers: 2-letter country code, 2 check digits and
  11-30 letters/digits, written solid or in groups of four; the ISO 13616
  mod-97 check must give 1.
* ``<CARD>``   payment card numbers: 13-19 digits, solid or in groups separated
  by single spaces or dashes; the Luhn check must pass.
* ``<SSN>``    US social security numbers NNN-NN-NNNN, leaving out numbers that
  are never issued (area 000, 666 or 900-999, group 00, serial 0000).
* ``<IP>``     IPv4 dotted quads (each octet 0-255) and IPv6 addresses, full or
  ``::``-compressed (optionally ending in an IPv4 quad).
* ``<PHONE>``  international numbers (``+CC ...``, 8-15 digits), North-American
  numbers such as ``(555) 123-4567``, ``555-123-4567``, ``555.123.4567`` or
  ``1-800-555-0199``, and 10-11 digit domestic numbers written with a trunk
  ``0`` such as ``020 7946 0958``.

Why the checksums: training data is full of long numbers that are not personal
data (order ids, timestamps, hashes, measurements, version strings). Redacting
them would damage the data for nothing, so a digit run only counts as a card or
an IBAN when its check digits are right, an IPv4 only when every octet is in
range, an IPv6 only when it parses, and an SSN only when it could have been
issued. Phone numbers have no checksum, so they need separators (or a leading
``+``), and plain years, amounts (``1,234.56``), dates (``2024-01-15``), times
(``10:30``) and order numbers (``#A12345``) are left alone.

Types are searched in the order EMAIL, IBAN, CARD, SSN, IP, PHONE, each on the
text the earlier ones left, so a number claimed by one type is never counted as
another. Replacing an item can make a neighbour visible (a number that was
glued to it by a separator), so the passes are repeated until one finds
nothing: the result is stable, and ``redact(redact(t)[0])[0] == redact(t)[0]``.

Speed: the patterns are compiled once, and text with neither a digit nor an
``@`` is returned at once (every kind of item above contains one of the two),
which is the common case for a corpus of short records.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

__all__ = ["PII_TYPES", "redact"]

PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN")

_FLAGS = re.ASCII | re.VERBOSE

# Cheap pre-check: every item we redact contains a digit or an "@".
_DIGIT_RE = re.compile(r"[0-9]")

# For counting digits without a Python-level loop.
_DROP_DIGITS = str.maketrans("", "", "0123456789")

# Most patterns below open with a look-ahead for their first character before
# the look-behinds: that lets `re` skip ahead to candidate positions instead of
# testing the look-behinds at every position.

# --- EMAIL ------------------------------------------------------------------
# The look-behind makes the local part start at the beginning of its run of
# allowed characters, so the scan stays linear on long runs without "@".
_EMAIL_RE = re.compile(
    r"""
    (?<![A-Za-z0-9._%+-])
    [A-Za-z0-9._%+-]+
    @
    [A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}
    (?![A-Za-z0-9_-])
    """,
    _FLAGS,
)

# --- IBAN -------------------------------------------------------------------
_IBAN_RE = re.compile(
    r"""
    (?=[A-Z])(?<![\w])
    [A-Z]{2}[0-9]{2}
    (?:
        (?:\ [A-Z0-9]{4}){2,7}(?:\ [A-Z0-9]{1,4})?   # grouped by four
      | [A-Z0-9]{11,30}                              # solid
    )
    (?![\w])
    """,
    _FLAGS,
)

# --- CARD -------------------------------------------------------------------
# Solid runs, or a group of four then 2-4 groups of 3-6 digits (4-4-4-4,
# 4-6-5, 4-6-4, 4-4-4-4-3). A grouped number must not continue into more
# digit groups either side, so we never check a window of a longer number.
_CARD_RE = re.compile(
    r"""
    (?=[0-9])(?<![\w])
    (?:
        (?<![0-9]\.)[0-9]{13,19}(?!\.[0-9])
      | (?<![0-9][\ .-])[0-9]{4}(?:[\ -][0-9]{3,6}){2,4}(?![\ .-][0-9])
    )
    (?![\w])
    """,
    _FLAGS,
)

# --- SSN --------------------------------------------------------------------
_SSN_RE = re.compile(
    r"""
    (?=[0-9])(?<![\w])(?<![0-9][.-])
    (?!000|666|9[0-9]{2})[0-9]{3}
    -(?!00)[0-9]{2}
    -(?!0000)[0-9]{4}
    (?![\w])(?![.-][0-9])
    """,
    _FLAGS,
)

# --- IP ---------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"

_IPV4_RE = re.compile(
    rf"""
    (?=[0-9])(?<![\w])(?<![0-9]\.)
    {_IPV4}
    (?![\w])(?!\.[0-9])
    """,
    _FLAGS,
)

# Candidates only: 2-8 colons with hex groups of at most 4, optionally ending
# in an IPv4 quad; `_valid_ipv6` decides. "10:30" (one colon) is never a
# candidate, and "10:30:45" fails validation (three groups and no "::").
_IPV6_RE = re.compile(
    rf"""
    (?<![\w:])
    (?:[0-9A-Fa-f]{{0,4}}:){{2,8}}
    (?:{_IPV4}|[0-9A-Fa-f]{{1,4}})?
    (?![\w:])(?!\.[0-9A-Za-z])
    """,
    _FLAGS,
)

# --- PHONE ------------------------------------------------------------------
_PHONE_RE = re.compile(
    r"""
    (?=[0-9+(])(?<![\w+#])(?<![0-9][.-])
    (?:
        # international: +CC then groups; 8-15 digits (checked in code)
        \+[1-9][0-9]{0,14}
        (?: [\ .-]?\([0-9]{1,4}\)
          | (?:[\ .-]|(?<=\)))[0-9]{1,8}
        ){0,7}
      |
        # North American: optional 1, then (NNN) NNN-NNNN or NNN-NNN-NNNN
        # with the same separator twice
        (?:1[\ .-])?
        (?: \([0-9]{3}\)\ ?[0-9]{3}[\ .-]
          | [0-9]{3}(?P<sep>[\ .-])[0-9]{3}(?P=sep)
        )
        [0-9]{4}
      |
        # domestic with trunk 0, e.g. 020 7946 0958; 10-11 digits (in code)
        \(?0[0-9]{2,4}\)?[\ -][0-9]{3,8}(?:[\ -][0-9]{3,4})?
    )
    (?![\w])(?![.-][0-9])
    """,
    _FLAGS,
)

_DATE_LIKE_RE = re.compile(r"\+?[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


# --- validators: return the replacement, or None to leave the match alone ---


def _luhn_ok(digits: str) -> bool:
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(s: str) -> Optional[str]:
    digits = s.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or digits.count("0") == len(digits):
        return None
    return "<CARD>" if _luhn_ok(digits) else None


def _iban_ok(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    # "A" -> 10 ... "Z" -> 35; digits stay as they are.
    numeric = "".join(ch if ch <= "9" else str(ord(ch) - 55) for ch in rearranged)
    return int(numeric) % 97 == 1


def _iban(s: str) -> Optional[str]:
    if " " not in s:
        return "<IBAN>" if _iban_ok(s) else None
    # Grouped: the last group(s) may be a following word such as "2024", so
    # also try the number without them, longest first.
    parts = s.split(" ")
    for k in range(len(parts), 2, -1):
        if _iban_ok("".join(parts[:k])):
            return "<IBAN>" + s[len(" ".join(parts[:k])):]
    return None


def _valid_ipv6(s: str) -> bool:
    if _DIGIT_RE.search(s) is None:  # "::", "add::bead", C++ "a::b": not addresses
        return False
    if "." in s:  # trailing IPv4 quad counts as two groups
        s = s[: s.rindex(":") + 1] + "0:0"
    if s.count("::") > 1:
        return False
    if "::" in s:
        left, right = s.split("::")
        groups = (left.split(":") if left else []) + (right.split(":") if right else [])
        if len(groups) > 7:
            return False
    else:
        groups = s.split(":")
        if len(groups) != 8:
            return False
    return all(groups)  # no empty group: rules out ":::" and a lone leading/trailing ":"


def _ipv6(s: str) -> Optional[str]:
    return "<IP>" if _valid_ipv6(s) else None


def _phone(s: str) -> Optional[str]:
    n = len(_DIGIT_RE.findall(s))
    if s[0] == "+":
        if not 8 <= n <= 15:
            return None
        seps = [c for c in s if c in " .-"]
        if seps == ["."]:  # +3.14159265: a signed decimal, not a phone
            return None
        if _DATE_LIKE_RE.fullmatch(s):
            return None
    elif not 10 <= n <= 11:
        return None
    return "<PHONE>"


def _sub(
    pattern: re.Pattern[str], text: str, check: Callable[[str], Optional[str]]
) -> tuple[str, int]:
    n = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal n
        s = m.group()
        out = check(s)
        if out is None:
            return s
        n += 1
        return out

    new = pattern.sub(repl, text)
    return (new, n) if n else (text, 0)


def _pass(text: str, counts: dict[str, int]) -> tuple[str, bool]:
    """One pass over all types in priority order; True if anything was replaced."""
    found = False

    def add(kind: str, n: int) -> None:
        nonlocal found
        if n:
            counts[kind] = counts.get(kind, 0) + n
            found = True

    if "@" in text:
        text, n = _EMAIL_RE.subn("<EMAIL>", text)
        add("EMAIL", n)
    # Each stage below runs only if the text could hold one of its items (the
    # digit count only goes down as items are replaced, so it stays a bound).
    digits = len(text) - len(text.translate(_DROP_DIGITS))
    if digits == 0:
        return text, found
    if digits >= 2:
        text, n = _sub(_IBAN_RE, text, _iban)
        add("IBAN", n)
    if digits >= 13:
        text, n = _sub(_CARD_RE, text, _card)
        add("CARD", n)
    if digits >= 9 and text.count("-") >= 2:
        text, n = _SSN_RE.subn("<SSN>", text)
        add("SSN", n)
    if "::" in text or text.count(":") >= 6:  # 6: full form ending in IPv4
        text, n = _sub(_IPV6_RE, text, _ipv6)
        add("IP", n)
    if digits >= 4 and text.count(".") >= 3:
        text, n = _IPV4_RE.subn("<IP>", text)
        add("IP", n)
    if digits >= 8:
        text, n = _sub(_PHONE_RE, text, _phone)
        add("PHONE", n)
    return text, found


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII in `text` with typed placeholders such as ``<EMAIL>``.

    Returns the redacted text and how many items of each type were replaced
    (only types with at least one). Text with nothing to redact is returned
    as the very same object.
    """
    if "@" not in text and _DIGIT_RE.search(text) is None:
        return text, {}
    counts: dict[str, int] = {}
    out = text
    while True:
        out, found = _pass(out, counts)
        if not found or ("@" not in out and _DIGIT_RE.search(out) is None):
            break
    if not counts:
        return text, {}
    return out, {kind: counts[kind] for kind in PII_TYPES if kind in counts}
