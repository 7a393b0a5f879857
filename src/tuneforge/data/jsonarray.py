"""Stream the elements of a top-level JSON array without loading the file.

The file is decoded in chunks and each element parsed with the standard
library's `JSONDecoder.raw_decode` where it starts, so memory stays at about one
chunk plus the largest element, and every element (or error) carries the line
it is on. A `.json` file that is really JSON Lines is handed to the JSONL reader.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.data.textfile import BAD_CHAR, MARK, bad_text, encoding_of
from tuneforge.errors import Problem

CHUNK = 1 << 20
# raw_decode fails on an element cut short by the end of the buffer; an error this close to
# the end (a cut `true`, a cut \u escape) may be such a cut, so more text is read and it is retried
_NEAR_END = 16
_SPACE = " \t\r\n"


class _Buffer:
    """Decoded text read on demand, with the line number of any position still held."""

    def __init__(self, handle, encoding: str, chunk: int):
        self.handle, self.chunk = handle, chunk
        self.decoder = codecs.getincrementaldecoder(encoding)(errors=MARK)
        self.text = ""
        self.eof = False
        self.line = 1  # line number at position `counted`
        self.counted = 0

    def more(self, at_least: int = 0) -> bool:
        """Append at least one chunk (or `at_least` bytes); False at the end of the file."""
        if self.eof:
            return False
        raw = self.handle.read(max(self.chunk, at_least))
        self.eof = not raw
        self.text += self.decoder.decode(raw, final=self.eof)
        return bool(raw)

    def line_at(self, pos: int) -> int:
        """Line of `pos`; positions must be asked for in increasing order."""
        self.line += self.text.count("\n", self.counted, pos)
        self.counted = pos
        return self.line

    def skip(self, pos: int, chars: str) -> int:
        """First position at or after `pos` not in `chars` (len(text) at the end of the file)."""
        while True:
            text = self.text
            while pos < len(text) and text[pos] in chars:
                pos += 1
            if pos < len(text) or not self.more():
                return pos

    def drop(self, pos: int) -> int:
        """Forget the text before `pos` (already parsed); returns the new position of `pos`."""
        self.line_at(pos)
        self.text = self.text[pos:]
        self.counted = 0
        return 0


def read_json_array(path: Path, fallback: Callable[[Path], Iterator[tuple[int, Any]]],
                    chunk: int = CHUNK) -> Iterator[tuple[int, Any]]:
    encoding, problem = encoding_of(path)
    if problem:
        yield 0, problem  # line 0: the whole file
        return
    with open(path, "rb") as handle:
        buf = _Buffer(handle, encoding, chunk)
        pos = buf.skip(0, " \t\r\n\ufeff")
        if pos >= len(buf.text):
            return  # an empty file has no records
        if buf.text[pos] != "[":
            # a .json file that is really JSON Lines is common enough to accept
            yield from fallback(path)
            return
        decoder = json.JSONDecoder()
        pos += 1
        after_comma = False
        while True:
            pos = buf.skip(pos, _SPACE)
            if pos >= len(buf.text):
                yield buf.line_at(pos), Problem("invalid_json", "the JSON array is not closed with ']'")
                return
            if buf.text[pos] == "]":
                if after_comma:
                    yield buf.line_at(pos), Problem("invalid_json", "a ',' right before the closing ']'; remove it")
                return
            if buf.text[pos] == ",":
                yield buf.line_at(pos), Problem("invalid_json", "a ',' with no element before it; remove it")
                pos += 1
                continue
            if pos > chunk:  # keep the buffer about one chunk long
                pos = buf.drop(pos)
            start = buf.line_at(pos)
            while True:
                try:
                    value, end = decoder.raw_decode(buf.text, pos)
                except json.JSONDecodeError as exc:
                    cut = exc.pos >= len(buf.text) - _NEAR_END or exc.msg.startswith("Unterminated string")
                    if cut and buf.more(len(buf.text) - pos):  # grow by doubling: long elements stay linear
                        continue
                    line = buf.line_at(max(exc.pos, pos))
                    inside = f" (in the element that starts on line {start})" if line != start else ""
                    yield line, Problem("invalid_json", f"{exc.msg}{inside}; the rest of the array cannot be read")
                    return
                except RecursionError:
                    yield start, Problem("invalid_json", "nesting is too deep; the rest of the array cannot be read")
                    return
                # a number or literal that ends exactly at the end of the buffer may go on
                if end == len(buf.text) and buf.more():
                    continue
                break
            if BAD_CHAR.search(buf.text, pos, end):
                yield start, bad_text(encoding, "the element")
            else:
                yield start, value
            pos = buf.skip(end, _SPACE)
            after_comma = pos < len(buf.text) and buf.text[pos] == ","
            if after_comma:
                pos += 1
            elif pos < len(buf.text) and buf.text[pos] != "]":
                # both elements are intact, so the rest of the array is still read
                yield buf.line_at(pos), Problem("invalid_json", "no ',' between this element and the one before; "
                                                "add it")
