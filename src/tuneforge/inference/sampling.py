"""Choosing the next token of each row from its logits.

Temperature 0 is greedy (the arg-max, exactly what `tuneforge eval` takes, so serve and
eval agree token for token). Otherwise the logits are divided by the temperature and
sampled from the smallest set of tokens whose probability reaches `top_p` (nucleus
sampling), with the request's own `torch.Generator`: a request with a seed gets the same
answer every time, whatever else shares its batch, because no other row draws from its
generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @classmethod
    def of(cls, temperature: float, top_p: float, seed: int | None) -> Sampling:
        if temperature <= 0:
            return cls()
        generator = torch.Generator()  # on the CPU: sampling reads one row of logits, cheap to copy there
        if seed is None:
            generator.seed()  # fresh entropy: unseeded requests differ from each other
        else:
            generator.manual_seed(seed)
        return cls(float(temperature), float(top_p), generator)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def sample(logits: torch.Tensor, how: Sampling) -> int:
    """One token from a [vocab] row of logits."""
    probs = torch.softmax(logits.float().cpu() / how.temperature, dim=-1)
    if how.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep a token while the mass before it is below top_p; the most likely one always stays
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < how.top_p
        keep[0] = True
        choice = torch.multinomial(sorted_probs * keep, 1, generator=how.generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=how.generator))


def next_tokens(logits: torch.Tensor, rows: list[Sampling]) -> list[int]:
    """The next token of every row of [rows, vocab] logits: one arg-max for the whole batch,
    then a draw for each row that samples."""
    picked = logits.argmax(dim=-1).tolist()
    for i, how in enumerate(rows):
        if not how.greedy:
            picked[i] = sample(logits[i], how)
    return picked
