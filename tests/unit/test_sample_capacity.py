"""The capacity the record's decisions left Ready: stabilisation keeps earlier asks, asks are whole replicas."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prescaler.sizing.loads import sample_capacity
from prescaler.sizing.samples import Samples


def _samples(forecast: list[list[float]], observed: list[list[float]], *, held: int = 0,
             unit: float = 0.0) -> Samples:
    f, r = np.asarray(forecast, dtype=float), np.asarray(observed, dtype=float)
    n = len(f)
    return Samples(lead_s=np.full(n, 600.0), actual=np.full(n, 100.0), forecast=f, observed=r, held=held,
                   unit=unit).usable()


def test_a_bucket_gets_the_least_its_serving_decisions_asked_for() -> None:
    s = _samples([[300.0, 120.0]], [[50.0, 50.0]])
    assert sample_capacity(s, 1.0, 1.0).tolist() == [120.0]  # the later scale-down applies at once


def test_the_stabilisation_keeps_an_earlier_higher_ask() -> None:
    # One held decision before the two serving ones: it asked for 500, within the window of the first.
    s = _samples([[500.0, 120.0, 300.0]], [[50.0, 50.0, 50.0]], held=1)
    # Serving decision 1 keeps max(500, 120) = 500; decision 2 keeps max(120, 300) = 300; the bucket: 300.
    assert sample_capacity(s, 1.0, 1.0).tolist() == [300.0]
    # A stale held decision keeps nothing; a stale serving decision does not limit the bucket.
    stale = _samples([[np.nan, 120.0, 300.0]], [[50.0, 50.0, 50.0]], held=1)
    assert sample_capacity(stale, 1.0, 1.0).tolist() == [120.0]
    serving_stale = _samples([[500.0, np.nan, 300.0]], [[50.0, 50.0, 50.0]], held=1)
    assert sample_capacity(serving_stale, 1.0, 1.0).tolist() == [300.0]


def test_asks_are_whole_replicas() -> None:
    s = _samples([[130.0]], [[0.0]], unit=50.0)
    assert sample_capacity(s, 1.0, 1.0).tolist() == [150.0]
    assert sample_capacity(s, 1.0, 1.0 / 1.3).tolist() == [100.0]  # exactly 100: no extra replica


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4)),
                min_size=1, max_size=20),
       st.floats(0.5, 3.0), st.sampled_from([0.0, 7.0, 100.0]))
def test_held_asks_and_rounding_only_ever_add_capacity(rows: list[tuple[float, ...]], m: float,
                                                       unit: float) -> None:
    f = [[a, b, c] for a, b, c, _ in rows]
    r = [[d, d, d] for *_, d in rows]
    plain = sample_capacity(_samples([row[1:] for row in f], [row[1:] for row in r]), 1.0, m)
    held = sample_capacity(_samples(f, r, held=1, unit=unit), 1.0, m)
    # Whole replicas round loads within the planner's guard (1e-9 of a replica) down: allow that much.
    assert np.all(held >= plain - 1e-9 * max(unit, 1.0))
    assert np.all(held <= np.maximum(plain, np.max(np.asarray(f) * m, axis=1)) + max(unit, 0.0) + 1e-6)
