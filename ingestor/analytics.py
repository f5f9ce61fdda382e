"""Derived signals the alert rules look at: the temperature-humidity index of a barn zone, and each
series' own rolling baseline (mean, spread, z-score) kept compactly in memory.

Sources of the numbers:
- THI = (1.8 T + 32) - (0.55 - 0.0055 RH) (1.8 T - 26), T in degC, RH in % (NRC 1971, the form used
  by Zimbelman et al. 2009 and by Armstrong 1994).
- THI classes: 68 is where high-producing cows start to lose milk (Zimbelman et al. 2009); 72 mild,
  79 moderate, 89 severe heat stress (Armstrong 1994).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

THI_LEVELS = ((89.0, "severe"), (79.0, "moderate"), (72.0, "mild"), (68.0, "onset"))


def thi(temperature_c: float, humidity_percent: float) -> float:
    """Temperature-humidity index of air at `temperature_c` and `humidity_percent`."""
    return (1.8 * temperature_c + 32) - (0.55 - 0.0055 * humidity_percent) * (1.8 * temperature_c - 26)


def thi_class(value: float) -> str | None:
    """The heat-stress class of a THI value, None below the onset threshold."""
    return next((name for threshold, name in THI_LEVELS if value >= threshold), None)


@dataclass(frozen=True)
class Baseline:
    mean: float
    std: float
    samples: int

    def zscore(self, value: float) -> float:
        """How many standard deviations `value` is from the mean (0 while the spread is unknown)."""
        return (value - self.mean) / self.std if self.std > 0 else 0.0

    def ratio(self, value: float) -> float:
        """`value` as a fraction of the mean (1.0 while the mean is zero)."""
        return value / self.mean if self.mean else 1.0


class Baselines:
    """An exponentially weighted mean and variance per series, weighted by time, not by count: a
    reading's weight halves every `half_life_s`, so a series that reports every minute and one that
    reports hourly have baselines over the same span of time. Four floats a series."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._state: dict[object, list[float]] = {}  # key -> [mean, variance, last time (epoch s), samples]

    def get(self, key: object) -> Baseline | None:
        s = self._state.get(key)
        return None if s is None else Baseline(s[0], math.sqrt(s[1]), int(s[3]))

    def observe(self, key: object, t: float, value: float) -> Baseline | None:
        """Fold `value` at epoch `t` into the series' baseline; return the baseline as it was before,
        which is what the value is judged against (None for the first value of a series)."""
        s = self._state.get(key)
        if s is None:
            self._state[key] = [value, 0.0, t, 1.0]
            return None
        before = Baseline(s[0], math.sqrt(s[1]), int(s[3]))
        if t <= s[2]:  # late or repeated: judged, not folded in (the baseline only moves forward)
            return before
        alpha = 1.0 - 0.5 ** ((t - s[2]) / self.half_life_s)
        delta = value - s[0]
        s[0] += alpha * delta
        s[1] = (1.0 - alpha) * (s[1] + alpha * delta * delta)
        s[2] = t
        s[3] += 1
        return before

    def restore(self, key: object, t: float, mean: float, std: float, samples: int) -> None:
        """Seed a series from stored aggregates after a restart."""
        self._state[key] = [mean, std * std, t, float(samples)]

    def __len__(self) -> int:
        return len(self._state)
