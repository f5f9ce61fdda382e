"""Derived signals: THI and time-weighted rolling baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.analytics import Baselines, thi, thi_class


@pytest.mark.parametrize(("t", "rh", "expected"), [(30.0, 70.0, 81.38), (20.0, 50.0, 65.25), (25.0, 90.0, 75.955)])
def test_thi_matches_the_nrc_formula(t: float, rh: float, expected: float) -> None:
    assert thi(t, rh) == pytest.approx(expected, abs=0.01)


def test_thi_classes() -> None:
    assert [thi_class(v) for v in (60, 68, 75, 80, 95)] == [None, "onset", "mild", "moderate", "severe"]


def test_baseline_converges_and_a_spike_stands_out() -> None:
    rng = np.random.default_rng(1)
    b = Baselines(half_life_s=6 * 3600)
    for minute in range(3 * 24 * 60):
        b.observe("cow", minute * 60.0, 50 + rng.normal(0, 5))
    base = b.get("cow")
    assert base is not None and base.mean == pytest.approx(50, abs=1.5) and base.std == pytest.approx(5, abs=1)
    judged = b.observe("cow", 3 * 24 * 3600.0, 150.0)  # judged against the baseline before it
    assert judged is not None and judged.zscore(150.0) > 15 and judged.ratio(150.0) == pytest.approx(3, abs=0.1)


def test_weight_is_by_time_not_by_count() -> None:
    fast, slow = Baselines(3600), Baselines(3600)
    for k in range(121):  # 0 for an hour, then 100 for an hour: every minute vs every hour
        fast.observe("s", k * 60.0, 0.0 if k <= 60 else 100.0)
    for k, v in enumerate((0.0, 0.0, 100.0)):
        slow.observe("s", k * 3600.0, v)
    # the last hour weighs 1/2, the hour before 1/4: (100 x 1/2) / (1/2 + 1/4), however often it was sampled
    assert slow.get("s").mean == pytest.approx(200 / 3)
    assert fast.get("s").mean == pytest.approx(200 / 3, abs=1.0)


def test_late_values_are_judged_but_do_not_move_the_baseline() -> None:
    b = Baselines(3600)
    b.observe("s", 100.0, 10.0)
    b.observe("s", 200.0, 10.0)
    before = b.get("s")
    assert b.observe("s", 150.0, 1000.0) == before and b.get("s") == before


def test_restore_seeds_a_series() -> None:
    b = Baselines(3600)
    b.restore("s", 0.0, 38.6, 0.2, 500, 86_400)
    base = b.observe("s", 60.0, 39.8)
    assert base is not None and base.samples == 500 and base.settled and base.zscore(39.8) == pytest.approx(6.0)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50))
def test_mean_stays_within_the_values_seen_and_variance_is_never_negative(values: list[float]) -> None:
    b = Baselines(600)
    for k, v in enumerate(values):
        b.observe("s", k * 60.0, v)
    base = b.get("s")
    assert min(values) - 1e-6 <= base.mean <= max(values) + 1e-6
    assert base.std >= 0 and not math.isnan(base.std)
