"""Which text encoding a data file uses, decided from its first bytes.

UTF-8 (with or without a byte-order mark) is the norm; UTF-16 and UTF-32 are read
when they carry a BOM (Excel and PowerShell write them); without one they show as
NUL bytes and are refused with a message that says how to fix the file.

Undecodable bytes never raise: the `tuneforge.mark` error handler turns each into
a lone surrogate, which valid text can never contain, so readers can point at the
exact line or element instead of stopping at the first bad byte.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from tuneforge.errors import Problem

MARK = "tuneforge.mark"
BAD_CHAR = re.compile("[\udc80-\udcff]")
_BOMS = (  # the UTF-32 LE mark starts with the UTF-16 LE one, so it is tested first
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _mark(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "\udc80", exc.end


codecs.register_error(MARK, _mark)


def encoding_of(path: Path) -> tuple[str, Problem | None]:
    """The codec name to open `path` with, or a problem for the whole file."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, None
    if b"\x00" in head:
        return "", Problem(
            "unsupported_encoding",
            "the file has NUL bytes: it is UTF-16 or UTF-32 without a byte-order mark, or not a text file; "
            "re-save it as UTF-8")
    return "utf-8", None


def label(encoding: str) -> str:
    """How to name the encoding to people."""
    return {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}[encoding]


def bad_text(encoding: str, what: str) -> Problem:
    """`what` ('the line', 'the row', ...) has bytes that do not decode."""
    name = label(encoding)
    code = "invalid_utf8" if name == "UTF-8" else "invalid_encoding"
    return Problem(code, f"{what} has bytes that are not valid {name}; re-save the file as UTF-8")
