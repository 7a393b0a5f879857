"""The `monitor:` section of the serve config (serve.yaml): the thresholds the monitor's
checks use, and how a retrained adapter is promoted.

    monitor:
      since: 7d                 # the window `tuneforge monitor` reads by default
      drift_p: 0.01             # input drift is flagged when a test's p-value is below this
      min_requests: 20          # fewer logged prompts: drift is not tested ("not enough data")
      max_invalid_rate: 0.1     # outputs that are not a label / not JSON
      label_drift_p: 0.01       # label distribution now vs the adapter's eval
      min_mean_score: null      # feedback mean below this fails (unset: not checked)
      ab_alpha: 0.05            # a variant significantly worse than the route's control fails
      promote_steps: [10, 50, 100]
      min_feedback: 20          # scores a promotion step waits for before it moves on
      margin: 0.0               # how much better a retrained candidate must score (main metric)
      min_new: 20               # logged corrections/good answers a retrain needs

Unknown keys are errors, as everywhere in tuneforge.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from tuneforge.config import Strict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'7d' -> seconds; ValueError naming the accepted units otherwise."""
    found = _DURATION.match(str(text))
    if not found:
        raise ValueError(f"expected a duration such as 30m, 24h or 7d (units s m h d w), got {text!r}")
    return float(found.group(1)) * _SECONDS[found.group(2)]


class MonitorConfig(Strict):
    since: str = Field("7d", description="default window: 30m, 24h, 7d, ...")
    drift_p: float = Field(0.01, gt=0, lt=1, description="input drift flagged when p < this")
    min_requests: int = Field(20, ge=2, description="logged prompts needed before drift is tested")
    max_invalid_rate: float = Field(0.1, ge=0, le=1, description="share of invalid outputs that fails")
    label_drift_p: float = Field(0.01, gt=0, lt=1, description="label distribution drift flagged when p < this")
    min_mean_score: float | None = Field(None, description="feedback mean below this fails; unset: not checked")
    ab_alpha: float = Field(0.05, gt=0, lt=1, description="a variant worse than control at this level fails")
    permutations: int = Field(1000, ge=99, le=100000, description="permutation test resamples")
    ngram_buckets: int = Field(1024, ge=16, le=65536, description="hashed n-gram profile size")
    examples: int = Field(5, ge=0, le=100, description="logged prompts most unlike training to show")
    promote_steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0],
                                       description="the candidate's share of the route at each step; ends at 100")
    min_feedback: int = Field(20, ge=1, description="scores on the candidate each promotion step waits for")
    margin: float = Field(0.0, ge=0, le=1, description="retrain: the candidate must beat the current adapter "
                          "by more than 0 and at least this on the main metric")
    min_new: int = Field(20, ge=1, description="retrain: logged corrections or good answers needed")
    good_score: float | None = Field(4.0, description="retrain: answers scored at least this count as good "
                                     "examples; unset: only corrections")

    @field_validator("since")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("promote_steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError("give rising percentages between 0 and 100 that end at 100, e.g. [10, 50, 100]")
        return steps
