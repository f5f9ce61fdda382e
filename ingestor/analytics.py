"""Derived signals the alert rules look at: the temperature-humidity index of a barn zone, and each
series' own rolling baseline (mean, spread, z-score) kept compactly in memory.

Sources of the numbers:
- THI = (1.8 T + 32) - (0.55 - 0.0055 RH) (1.8 T - 26), T in degC, RH in % (NRC 1971, the form used
  by Zimbelman et al. 2009 and by Armstrong 1994).
- THI classes: 68 is where high-producing cows start to lose milk (Zimbelman et al. 2009); 72 mild,
  79 moderate, 89 severe heat stress (Armstrong 1994).
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

THI_LEVELS = ((89.0, "severe"), (79.0, "moderate"), (72.0, "mild"), (68.0, "onset"))


def thi(temperature_c: float, humidity_percent: float) -> float:
    """Temperature-humidity index of air at `temperature_c` and `humidity_percent`."""
    return (1.8 * temperature_c + 32) - (0.55 - 0.0055 * humidity_percent) * (1.8 * temperature_c - 26)


def thi_class(value: float) -> str | None:
    """The heat-stress class of a THI value, None below the onset threshold."""
    return next((name for threshold, name in THI_LEVELS if value >= threshold), None)


# A baseline is trusted once it has seen this many values over at least this long: a cow's first
# hours on a collar (or an ingestor's first minutes without restored state) raise nothing.
SETTLED_SAMPLES = 4
SETTLED_SPAN_S = 86_400.0
# Values further than this many standard deviations from the mean are folded in clipped to that
# distance (winsorised): an oestrus or a fever must not drag the cow's own baseline up after it.
WINSOR_Z = 3.0


@dataclass(frozen=True)
class Baseline:
    mean: float
    std: float
    samples: int
    settled: bool = True

    def zscore(self, value: float) -> float:
        """How many standard deviations `value` is from the mean (0 while the spread is unknown)."""
        return (value - self.mean) / self.std if self.std > 0 else 0.0

    def ratio(self, value: float) -> float:
        """`value` as a fraction of the mean (1.0 while the mean is zero)."""
        return value / self.mean if self.mean else 1.0


# Indexes into a series' state list (a list, not an object: there is one per animal and metric):
# the baseline's weighted sums of values and of squares, last time and count; the weight not yet
# gathered (0.5 ** (span / half-life)); the short moving average and last value; the last interval
# between readings with its two smoothing factors (series report at fixed intervals: computed once);
# the baseline's mean and spread as of the last fold, and whether it was settled then (1.0); the
# newest reading judged (a reading not newer is late: stored, never judged) and the series' farm.
(_SUM, _SQUARES, _LAST_T, _N, _REMAINING, _AVG, _LAST_V, _DT, _ALPHA, _ALPHA_AVG, _MEAN, _STD, _SETTLED, _NEWEST,
 _FARM, _DAY, _SLOW, _ALPHA_DAY, _ALPHA_SLOW, _KEEP_WINDOW, _WINDOWS, _GROUP, _GROUP_SUMS, _HOUR_VAR,
 _ALPHA_HOUR_VAR) = range(25)
# The day's level (half-life 12 h: the daily rhythm mostly averaged out) against the weeks' level
# (half-life 7 days): a decline over days, as lameness shows in activity and lying, that a cow's own
# three-day baseline would follow down.
DAY_HALF_LIFE_S = 12 * 3_600.0
SLOW_HALF_LIFE_S = 7 * 86_400.0
# A baseline spanning days takes at most one value a minute per series: a sensor reporting every few
# seconds costs a lookup and two divisions per reading, not an update.
MIN_FOLD_S = 60.0


def _new_state(t: float, value: float, farm: int | None = None) -> list:
    return [0.0, 0.0, t, 1.0, 1.0, value, value, -1.0, 0.0, 0.0, value, 0.0, 0.0, t, farm, value, value, 0.0, 0.0, 1.0,
            None, None, None, -1.0, 0.0]


class Baselines:
    """An exponentially weighted mean and variance per series, weighted by time, not by count: a
    reading's weight halves every `half_life_s`, so a series that reports every minute and one that
    reports hourly have baselines over the same span of time. Ten floats a series (with the short
    moving average, over `average_half_life_s`, that `Signals` reads beside the baseline)."""

    def __init__(self, half_life_s: float, average_half_life_s: float = 3_600.0) -> None:
        self.half_life_s = half_life_s
        self.average_half_life_s = average_half_life_s
        # Settled: enough values, and a day behind them (the start's weight has fallen this far).
        self.settled_remaining = 0.5 ** (SETTLED_SPAN_S / half_life_s)
        self._state: dict[object, list[float]] = {}

    def _baseline(self, s: list[float]) -> Baseline:
        return Baseline(s[_MEAN], s[_STD], int(s[_N]), s[_SETTLED] == 1.0)

    def get(self, key: object) -> Baseline | None:
        s = self._state.get(key)
        return None if s is None else self._baseline(s)

    def observe(self, key: object, t: float, value: float) -> Baseline | None:
        """Fold `value` at epoch `t` into the series' baseline; return the baseline as it was before,
        which is what the value is judged against (None for the first value of a series)."""
        s = self._state.get(key)
        if s is None:
            self._state[key] = _new_state(t, value)
            return None
        before = self._baseline(s)
        self._fold(s, t, value, before.mean, before.std if before.settled else None)
        return before

    def _fold(self, s: list[float], t: float, value: float, mean: float, std: float | None) -> None:
        """Move the baseline and the moving average to `value` at `t` (at most once a MIN_FOLD_S);
        `mean`, `std`: the baseline before, `std` given once settled, to winsorise at. A late or
        repeated value is judged by the caller but not folded in: baselines only move forward."""
        dt = t - s[_LAST_T]
        if dt < MIN_FOLD_S:
            return
        if dt != s[_DT]:
            s[_DT], s[_ALPHA] = dt, 1.0 - 0.5 ** (dt / self.half_life_s)
            s[_ALPHA_AVG] = 1.0 - 0.5 ** (dt / self.average_half_life_s)
            s[_ALPHA_DAY] = 1.0 - 0.5 ** (dt / DAY_HALF_LIFE_S)
            s[_ALPHA_SLOW] = 1.0 - 0.5 ** (dt / SLOW_HALF_LIFE_S)
            # A reading stands for the time since the last one: `dt` of its same-hours window's daily 2 h.
            s[_KEEP_WINDOW] = 0.5 ** (min(dt, WINDOW_S) / WINDOW_S / WINDOW_HALF_LIFE_DAYS)
            s[_ALPHA_HOUR_VAR] = 1.0 - 0.5 ** (dt / (WINDOW_HALF_LIFE_DAYS * 86_400.0))
        s[_AVG] += s[_ALPHA_AVG] * (value - s[_AVG])
        s[_LAST_V] = value
        if std is not None:
            reach = WINSOR_Z * std
            value = min(max(value, mean - reach), mean + reach)
        alpha = s[_ALPHA]
        keep = 1.0 - alpha
        s[_SUM] = keep * s[_SUM] + alpha * value
        s[_SQUARES] = keep * s[_SQUARES] + alpha * value * value
        s[_REMAINING] *= keep
        s[_LAST_T] = t
        s[_N] += 1
        # The weighted sums start from zero and are divided by the weight gathered so far (as Adam
        # corrects its moments): unbiased from the second reading on, where a mean started at the first
        # value would still be mostly that value days later. (After a fold some weight is gathered.)
        gathered = 1.0 - s[_REMAINING]
        mean = s[_SUM] / gathered
        s[_MEAN], s[_STD] = mean, math.sqrt(max(s[_SQUARES] / gathered - mean * mean, 0.0))
        s[_SETTLED] = float(s[_N] >= SETTLED_SAMPLES and s[_REMAINING] <= self.settled_remaining)

    def restore(self, key: object, t: float, mean: float, std: float, samples: int, span_s: float,
                farm: int | None = None) -> None:
        """Seed a series from stored aggregates after a restart: `samples` values over `span_s` up to `t`.
        No reading of it has been judged yet, so none that follows is late."""
        gathered = 1.0 - 0.5 ** (span_s / self.half_life_s)
        s = [mean * gathered, (std * std + mean * mean) * gathered, t, float(samples), 1.0 - gathered, mean, mean,
             -1.0, 0.0, 0.0, mean, std, 0.0, -math.inf, farm, mean, mean, 0.0, 0.0, 1.0, None, None, None, -1.0, 0.0]
        s[_SETTLED] = float(samples >= SETTLED_SAMPLES and s[_REMAINING] <= self.settled_remaining)
        self._state[key] = s

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __len__(self) -> int:
        return len(self._state)


# What the alert rules can ask about a source (contract section 7). Per metric: the value, its ratio
# to and z-score against the source's own baseline, a short moving average and the rate of change
# per hour; against her own rhythm and her group (`Signals`): the moving average's ratio to and
# z-score against the same hours of her previous days, the day's level against the weeks' level,
# her group's typical ratio now, and her ratio beyond her group's (of her same-hours ratio, or of her
# baseline ratio for a metric measured at milkings, and of the day's level); per zone: THI; per
# device: battery, signal, missed reporting intervals and hours without any value changing.
BASIC_SIGNALS = ("value", "ratio", "zscore", "average", "rate")
CONTEXT_SIGNALS = ("hour_ratio", "hour_zscore", "day_ratio", "group_ratio", "vs_group", "day_vs_group")
METRIC_SIGNALS = BASIC_SIGNALS + CONTEXT_SIGNALS
SOURCE_SIGNALS = ("thi", "battery", "signal_strength", "missed_intervals", "unchanged_h")
SIGNALS = METRIC_SIGNALS + SOURCE_SIGNALS

# Sources of THI: a zone's newest air temperature and humidity.
THI_INPUTS = ("temperature_c", "humidity_percent")

# Same hours: a day in 12 windows of 2 h; each window's mean of the moving average over the days, a
# day's weight halving every 3 days (so about the last week counts), trusted once it holds two days'
# worth. Milking and feeding peaks come back at the same hours and are her normal there. The z-score
# divides by her typical deviation from her same hours over all of them (weighted by time, the same
# half-life): one window's few days give too jumpy a spread.
WINDOW_S = 7_200.0
WINDOWS = int(86_400 // WINDOW_S)
WINDOW_HALF_LIFE_DAYS = 3.0
WINDOW_UNSETTLED = 0.5 ** (2.0 / WINDOW_HALF_LIFE_DAYS) + 1e-9  # the weight still missing after two days
# Her group: the mean log ratio of its cows' readings, weighted by time (half-life an hour for
# collar metrics, 12 h for milkings, which spread over the day), each cow's log ratio clipped at
# +-GROUP_CLIP (a cow in heat or sick must not move the group) and taken in after her own reading is
# judged; only with GROUP_MIN cows or more (below that, she is her own group: her ratio is the one
# beyond it).
GROUP_HALF_LIFE_S = 3_600.0
GROUP_SESSION_HALF_LIFE_S = 12 * 3_600.0
GROUP_CLIP = math.log(1.5)
GROUP_MIN = 5
_EMPTY_WINDOWS = (0.0, 0.0, 1.0) * WINDOWS  # per window: weighted sum, sum of squares, weight still missing


class Signals:
    """The current signals of every source (a cow, a zone, a device), updated reading by reading.

    `baseline_half_life_s` sets how far back "the cow's own normal" reaches (days: slow enough that
    an episode of hours stands out, fast enough to follow the lactation curve); `average_half_life_s`
    sets the moving average's span. Each source's signals are one dict keyed (signal, metric), which
    the rules read directly. This runs for every reading: one state lookup, no objects made.

    State is bounded: at most `max_series_per_farm` series per farm and `max_series` in all (a new
    series beyond either is not tracked: its readings are stored but not judged, and counted in
    `untracked`), and `evict` forgets series idle for longer than `idle_s` of their farm's clock.
    """

    def __init__(self, baseline_half_life_s: float = 3 * 86_400.0, average_half_life_s: float = 3_600.0, *,
                 max_series: int = 1 << 62, max_series_per_farm: int = 1 << 62) -> None:
        self.baselines = Baselines(baseline_half_life_s, average_half_life_s)
        self.current: dict[str, dict[tuple[str, str | None], float]] = {}
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}  # metric -> its signal keys, made once
        # Her rhythm and her group, for the metrics some rule asks about so (None: every metric): per
        # group (a farm's pen) and metric, the weight, the weighted sums of its cows' log ratios (same
        # hours, day) and their time; the cows of each group. Each series keeps its same-hours windows.
        self.contextual: frozenset[str] | None = frozenset()
        self.sessions: frozenset[str] = frozenset()  # metrics measured at milkings: no same hours
        self.groups: dict[tuple[object, str], list[float]] = {}
        self.members: dict[object, set[str]] = {}
        self.wanted = frozenset(SIGNALS)
        self.max_series, self.max_series_per_farm = max_series, max_series_per_farm
        self.per_farm: dict[int | None, int] = {}  # farm -> series tracked
        self.untracked = 0  # readings of new series refused by a cap
        self._warned = -math.inf  # monotonic time of the last log line about the caps

    @property
    def wanted(self) -> frozenset[str]:
        """The signals some rule asks for: the moving average and rate are kept only when asked."""
        return self._wanted

    @wanted.setter
    def wanted(self, signals: frozenset[str]) -> None:
        self._wanted = signals
        self._moving = bool(signals & {"average", "rate"})

    def fold(self, source: str, farm: int | None, t: float, metric: str, value: float, group: object = None
             ) -> dict[tuple[str, str | None], float] | None:
        """Take one reading of `metric` from `source` (of `farm`, and of `group`: her farm and pen, for
        a cow) at epoch `t`; return the source's signals, or None when the reading is not to be judged:
        late (not newer than the newest reading of the series already taken: it neither becomes the
        current value nor moves the baseline), or of a new series beyond the caps."""
        baselines = self.baselines
        s = baselines._state.get((source, metric))
        if s is None:
            return self._first(source, farm, t, metric, value)
        if t <= s[_NEWEST]:
            return None
        s[_NEWEST] = t
        signals = self.current.get(source)
        if signals is None:
            signals = self.current[source] = {}
        keys = self._keys.get(metric)
        if keys is None:
            keys = self._keys[metric] = tuple((name, metric) for name in METRIC_SIGNALS)
        signals[keys[0]] = value
        std = None
        if s[_SETTLED]:  # judged against the baseline as it was before this reading
            mean, std = s[_MEAN], s[_STD]
            signals[keys[1]] = value / mean if mean else 1.0
            signals[keys[2]] = (value - mean) / std if std else 0.0
        last_t = s[_LAST_T]
        if t - last_t >= MIN_FOLD_S:
            last_value = s[_LAST_V]
            baselines._fold(s, t, value, s[_MEAN], std)
            if self._moving:
                signals[keys[3]] = s[_AVG]
                signals[keys[4]] = (value - last_value) * 3600.0 / (t - last_t)
            if self.contextual is None or metric in self.contextual:
                self._context(s, source, t, value, signals, keys, group, metric in self.sessions, std)
        if metric in THI_INPUTS:
            self._thi(signals)
        return signals

    def _context(self, s: list, source: str, t: float, value: float, signals: dict[tuple[str, str | None], float],
                 keys: tuple, group: object, session: bool, std: float | None) -> None:
        """Her own rhythm and her group, after `value` at `t` has been folded into her baseline (which
        was settled, with spread `std`, if that is not None): the moving average against the same
        2-hour window of her previous days (a collar metric; the window learns from the first day on,
        winsorised as the baseline is), the day's level against the weeks', and where she stands beyond
        her group."""
        k_hour_ratio, k_hour_zscore, k_day_ratio, k_group_ratio, k_vs_group, k_day_vs_group = keys[5:]
        if session:
            own: float | None = signals.get(keys[1])
        else:
            windows = s[_WINDOWS]
            if windows is None:
                windows = s[_WINDOWS] = array("d", _EMPTY_WINDOWS)
            i = int(t % 86_400.0 // WINDOW_S) * 3
            remaining, average = windows[i + 2], s[_AVG]
            if remaining <= WINDOW_UNSETTLED:
                gathered = 1.0 - remaining
                w_mean = windows[i] / gathered
                var = s[_HOUR_VAR]
                if var < 0.0:  # her first trusted window: its spread to begin with
                    var = s[_HOUR_VAR] = max(windows[i + 1] / gathered - w_mean * w_mean, 0.0)
                spread = math.sqrt(var)
                own = signals[k_hour_ratio] = average / w_mean if w_mean else 1.0
                signals[k_hour_zscore] = (average - w_mean) / spread if spread else 0.0
                reach = WINSOR_Z * spread
                deviation = min(max(average - w_mean, -reach), reach) if var else average - w_mean
                s[_HOUR_VAR] = var + s[_ALPHA_HOUR_VAR] * (deviation * deviation - var)
                average = w_mean + deviation
            else:  # another window's figures would be stale here; her group still sees her against her baseline
                own = average / s[_MEAN] if std is not None and s[_MEAN] else None
                signals.pop(k_hour_ratio, None)
                signals.pop(k_hour_zscore, None)
            keep = s[_KEEP_WINDOW]
            alpha = 1.0 - keep
            windows[i] = keep * windows[i] + alpha * average
            windows[i + 1] = keep * windows[i + 1] + alpha * average * average
            windows[i + 2] = remaining * keep
        if std is None:  # until her baseline is settled, the day's and the weeks' level are its mean so far
            s[_DAY] = s[_SLOW] = s[_MEAN]
            return
        mean = s[_MEAN]
        s[_DAY] += s[_ALPHA_DAY] * (value - s[_DAY])
        s[_SLOW] += s[_ALPHA_SLOW] * (min(max(value, mean - WINSOR_Z * std), mean + WINSOR_Z * std) - s[_SLOW])
        day = s[_DAY] / s[_SLOW] if s[_SLOW] else 1.0
        signals[k_day_ratio] = day
        if own is None:  # figures of another window would be stale here
            signals.pop(k_group_ratio, None)
            signals.pop(k_vs_group, None)
            signals.pop(k_day_vs_group, None)
            return
        if group is None:
            return
        if s[_GROUP] != group:
            self._join(s, source, group, keys[0][1])
        g = s[_GROUP_SUMS]
        if t > g[3]:
            keep = 0.5 ** ((t - g[3]) / (GROUP_SESSION_HALF_LIFE_S if session else GROUP_HALF_LIFE_S))
            g[0] *= keep
            g[1] *= keep
            g[2] *= keep
            g[3] = t
        if g[0] < 1.0 or len(self.members[group]) < GROUP_MIN:
            signals[k_group_ratio], signals[k_vs_group], signals[k_day_vs_group] = 1.0, own, day
        else:  # the others' level: before her reading is taken in
            level = math.exp(g[1] / g[0])
            signals[k_group_ratio] = level
            signals[k_vs_group] = own / level
            signals[k_day_vs_group] = day / math.exp(g[2] / g[0])
        g[0] += 1.0
        g[1] += min(max(math.log(own), -GROUP_CLIP), GROUP_CLIP) if own > 0 else -GROUP_CLIP
        g[2] += min(max(math.log(day), -GROUP_CLIP), GROUP_CLIP) if day > 0 else -GROUP_CLIP

    def _join(self, s: list, source: str, group: object, metric: str) -> None:
        """A series' cow joins `group` (her first reading, or she moved pen)."""
        if s[_GROUP] is not None:
            old = self.members.get(s[_GROUP])
            if old is not None:
                old.discard(source)
        members = self.members.get(group)
        if members is None:
            members = self.members[group] = set()
        members.add(source)
        sums = self.groups.get((group, metric))
        if sums is None:
            sums = self.groups[(group, metric)] = [0.0, 0.0, 0.0, -math.inf]
        s[_GROUP], s[_GROUP_SUMS] = group, sums

    def _first(self, source: str, farm: int | None, t: float, metric: str, value: float
               ) -> dict[tuple[str, str | None], float] | None:
        """The first reading of a series: tracked if the caps allow."""
        if not self.admit(farm):
            return None
        self.baselines._state[(source, metric)] = _new_state(t, value, farm)
        signals = self.current.get(source)
        if signals is None:
            signals = self.current[source] = {}
        signals[("value", metric)] = value
        if self._moving:
            signals[("average", metric)] = value
        if metric in THI_INPUTS:
            self._thi(signals)
        return signals

    def admit(self, farm: int | None) -> bool:
        """Count a new series of `farm` if the caps have room; else count it as not tracked (and say
        so in the log, at most once a minute)."""
        n = self.per_farm.get(farm, 0)
        if n < self.max_series_per_farm and len(self.baselines) < self.max_series:
            self.per_farm[farm] = n + 1
            return True
        self.untracked += 1
        now = time.monotonic()
        if now - self._warned >= 60.0:
            self._warned = now
            log.warning("alerts: new series not tracked (farm %s has %d of %d series, %d of %d in all); %d readings "
                        "of untracked series so far", farm, n, self.max_series_per_farm, len(self.baselines),
                        self.max_series, self.untracked)
        return False

    @staticmethod
    def _thi(signals: dict[tuple[str, str | None], float]) -> None:
        air, humidity = signals.get(("value", "temperature_c")), signals.get(("value", "humidity_percent"))
        if air is not None and humidity is not None:
            signals[("thi", None)] = thi(air, humidity)

    def set(self, source: str, signal: str, value: float) -> dict[tuple[str, str | None], float]:
        """Set a source-level signal (battery, signal strength, missed intervals)."""
        signals = self.current.get(source)
        if signals is None:
            signals = self.current[source] = {}
        signals[(signal, None)] = value
        return signals

    def restore(self, source: str, farm: int | None, metric: str, t: float, mean: float, std: float, samples: int,
                span_s: float) -> bool:
        """Seed a series not in memory from stored aggregates (see `Baselines.restore`), within the caps."""
        if (source, metric) in self.baselines or not self.admit(farm):
            return False
        self.baselines.restore((source, metric), t, mean, std, samples, span_s, farm)
        return True

    def restore_window(self, source: str, metric: str, window: int, mean: float, std: float, days: float) -> None:
        """Seed one same-hours window of a series just seeded from the aggregates: its mean and spread
        over `days` days."""
        s = self.baselines._state.get((source, metric))
        if s is None or not 0 <= window < WINDOWS:
            return
        windows = s[_WINDOWS]
        if windows is None:
            windows = s[_WINDOWS] = array("d", _EMPTY_WINDOWS)
        remaining = 0.5 ** (days / WINDOW_HALF_LIFE_DAYS)
        gathered = 1.0 - remaining
        windows[3 * window:3 * window + 3] = array("d", (mean * gathered, (std * std + mean * mean) * gathered,
                                                         remaining))

    def evict(self, clocks: Mapping[int | None, float], idle_s: float) -> set[str]:
        """Forget series whose newest reading is more than `idle_s` behind their farm's clock; return
        the sources left with no series."""
        state = self.baselines._state
        stale = [key for key, s in state.items() if clocks.get(s[_FARM], -math.inf) - s[_LAST_T] > idle_s]
        emptied = set()
        for key in stale:
            s = state.pop(key)
            self.per_farm[s[_FARM]] -= 1
            source, metric = key
            signals = self.current.get(source)
            if signals is not None:
                for name in METRIC_SIGNALS:
                    signals.pop((name, metric), None)
                if not any(m is not None for _, m in signals):
                    signals.pop(("thi", None), None)
                    emptied.add(source)
        for farm in [f for f, n in self.per_farm.items() if n <= 0]:
            del self.per_farm[farm]
        for group, members in list(self.members.items()):
            members -= emptied
            if not members:
                del self.members[group]
                for key in [k for k in self.groups if k[0] == group]:
                    del self.groups[key]
        return emptied

    def series_of(self, source: str) -> bool:
        """Whether `source` has signals of any metric."""
        signals = self.current.get(source)
        return signals is not None and any(m is not None for _, m in signals)
