"""The text of one answer as its tokens arrive: streamed pieces that are always whole
characters and never the start of a stop string.

    answer = AnswerText(tokenizer, stop=["\\n\\n"])
    for token in tokens:
        piece = answer.push(token)      # "" while text is held back
        if answer.stopped:              # a stop string appeared: the answer ends before it
            break
    rest = answer.finish()              # whatever was held back, at the end

Why decode everything every time: a token is not a piece of text. A byte-level tokenizer
splits a multi-byte character over several tokens (decoding one alone gives U+FFFD), and
SentencePiece tokenizers drop or add a leading space depending on what precedes a token.
Decoding all generated ids and emitting what is new is correct for both, and the joined
pieces equal `tokenizer.decode(ids)`, which is what `tuneforge eval` scores. A trailing
U+FFFD (a character still incomplete) is held back until the next token completes it.

Stop strings end the answer and are not part of it; text that could be the beginning of a
stop string is held back until it is clear it is not, so a client never receives half of
a stop string that the final answer would not contain.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class AnswerText:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one generated token; return the new text that is safe to show ("" if none)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._upto(cut)
        self.text = text
        return self._upto(len(text) - self._held(text))

    def finish(self) -> str:
        """The rest of the answer, held-back characters included (the answer is over)."""
        return self._upto(len(self.text))

    def _held(self, text: str) -> int:
        """How many trailing characters to keep back: an incomplete character, or a suffix
        that a stop string starts with."""
        held = len(text) - len(text.rstrip(REPLACEMENT))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _upto(self, end: int) -> str:
        # never take back what was sent: a tokenizer whose decoding rewrites earlier text
        # (none of ours) would lose those characters rather than repeat them
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece
