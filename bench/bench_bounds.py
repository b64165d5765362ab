"""What a perfect forecast of the load's level would buy, against reactive at equal replica-hours.

    python bench/bench_bounds.py [SCENARIO ...] [--windows 5,15,30,60]   (minutes)

A *clairvoyant* reference replays each backtest scenario's evaluated window (the same window, capacity,
startup delay, HPA scale-down stabilisation and headroom sweep as `bench_backtest.py`) with a forecast no
forecaster can make: the load's centered moving mean over a window of minutes, past and future alike. It sizes
as the planner does by headroom, max(P, R) with P that level's maximum over the lead window and R the load
observed in the last bucket (the reactive floor), and once more without the floor. Each sweep is read
against reactive's as the frontier target reads predictive's: unserved at equal replica-hours, as a
share of reactive's; and at the replica-hours (× the oracle's) where it first serves 99.85%, the served floor
of the service-level target.

What it tells: on per-minute traffic most of the load reactive leaves unserved is minute-to-minute noise
around the level. If even a clairvoyant of the 15- or 30-minute level cannot leave ≤ 0.5× of reactive's
unserved load, that target is out of reach of any forecast of the level, however good, and only a
forecast of the noise itself (not something traffic history offers) would meet it. Nothing here is
causal: these are bounds, not policies a user could run. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backtest import SCENARIOS, Scenario

from prescaler.backtest import evaluated_window
from prescaler.backtest.policies import (
    HPA_WINDOW,
    oracle_requests,
    reactive_requests,
    ready_from_requests,
    replay_policy,
)
from prescaler.backtest.results import kpis
from prescaler.planning import ScalingPolicy

HEADROOMS = (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0)
SERVED = 99.85  # the service-level target's floor
DEFAULT = ("clarknet_1m_2m", "clarknet_1m_10m", "clarknet_5m_2m", "clarknet_5m_10m")

Curve = list[tuple[float, float]]  # (replica-hours, unserved %) per headroom


class Replay:
    """One scenario's evaluated window, ready to replay a policy's requests through the startup delay."""

    def __init__(self, sc: Scenario) -> None:
        s, step, e0 = evaluated_window(sc.series, step=sc.step, last=sc.last, warmup=None)
        values = s.to_numpy(dtype=float)
        self.step = step.to_pytimedelta()
        self.ds = pd.DatetimeIndex(s.index[e0:])
        self.load = values[e0:]
        self.prev = values[e0 - 1: len(values) - 1]
        self.initial = float(pd.Series(values[:e0]).ffill().iloc[-1])
        self.delay_steps = math.ceil(sc.startup_delay / self.step - 1e-9)
        self.lead = self.delay_steps * self.step
        self.capacity = sc.capacity
        self.all_values = values
        self.e0 = e0
        self.oracle_rh = float(oracle_requests(self.load, self.capacity).sum()) * self.step.total_seconds() / 3600

    def policy(self, headroom: float) -> ScalingPolicy:
        return replay_policy(self.capacity, self.lead, self.step, headroom, "yhat", HPA_WINDOW)

    def kpis(self, requested: np.ndarray) -> tuple[float, float]:
        ready = ready_from_requests(requested, self.delay_steps)
        rh, unserved, _, _ = kpis(self.load, requested, ready, self.capacity, self.step.total_seconds() / 3600)
        return rh, unserved

    def sweep(self, requests: Callable[[ScalingPolicy], np.ndarray]) -> Curve:
        return [self.kpis(requests(self.policy(h))) for h in HEADROOMS]

    def reactive(self, policy: ScalingPolicy) -> np.ndarray:
        return reactive_requests(self.ds, self.prev, self.initial, policy)

    def level(self, minutes: int) -> np.ndarray:
        """The centered moving mean over `minutes` (at least one bucket) of the whole trace, future
        included, on the evaluated window."""
        window = max(1, round(minutes * 60 / self.step.total_seconds()))
        whole = pd.Series(self.all_values).rolling(window, center=True, min_periods=1).mean()
        return whole.to_numpy()[self.e0:]

    def clairvoyant(self, level: np.ndarray, floor: bool) -> Callable[[ScalingPolicy], np.ndarray]:
        """Requests sized from max(P, R), P the level's highest over each decision's lead window (now to now +
        lead time + one tick), through reactive's own steps (bounds, stabilisation, step limit)."""
        # The buckets t .. t + delay + 1 (the lead time and one tick), as a trailing window of the reversed level.
        span = self.delay_steps + 2
        peak = pd.Series(level[::-1]).rolling(span, min_periods=1).max().to_numpy()[::-1]
        observed = self.prev if floor else np.zeros(len(self.prev))
        sized = np.maximum(np.nan_to_num(peak), np.nan_to_num(observed))
        initial = float(np.nan_to_num(level[0]))
        return lambda policy: reactive_requests(self.ds, sized, initial, policy)


def share_at(reactive: Curve, rh: float, unserved: float) -> float | None:
    """`unserved` as a share of reactive's at `rh` replica-hours (interpolated); None outside reactive's
    sweep or where reactive leaves nothing."""
    xs, ys = [p[0] for p in reactive], [p[1] for p in reactive]
    if not xs[0] <= rh <= xs[-1]:
        return None
    theirs = float(np.interp(rh, xs, ys))
    return unserved / theirs if theirs > 0 else None


def cost_to_serve(curve: Curve, served: float) -> float | None:
    """The replica-hours at which `curve` first leaves no more than 100 − `served` % unserved, interpolated
    between sweep points; None when no point does."""
    limit = 100.0 - served
    for (rh0, u0), (rh1, u1) in zip([(math.nan, math.inf), *curve], curve, strict=False):
        if u1 <= limit:
            return rh1 if not math.isfinite(u0) else rh0 + (u0 - limit) / (u0 - u1) * (rh1 - rh0)
    return None


def describe(label: str, curve: Curve, reactive: Curve | None, oracle_rh: float) -> str:
    """One line: the worst share of reactive's unserved (unless `reactive` is None), the cost of serving
    SERVED %, then every sweep point."""
    shares = [share_at(reactive, rh, u) if reactive is not None else None for rh, u in curve]
    known = [s for s in shares if s is not None]
    cost = cost_to_serve(curve, SERVED)
    served = f"{SERVED:g}% served at " + (f"{cost / oracle_rh:.2f}× oracle" if cost is not None else "no point")
    if reactive is None:
        worst = served
    else:
        worst = (f"worst share {max(known):.2f}" if known else "no point within reactive's sweep") + f"; {served}"
    points = ", ".join(f"{rh:,.0f} rh {u:.3f}%" + (f" ({s:.2f})" if s is not None else "")
                       for (rh, u), s in zip(curve, shares, strict=True))
    return f"  {label:<34} {worst}: {points}"


def run(name: str, windows: Sequence[int]) -> None:
    sc = SCENARIOS[name]()
    replay = Replay(sc)
    print(f"\n== {name}: {sc.title}")
    reactive = replay.sweep(replay.reactive)
    print(f"  oracle {replay.oracle_rh:,.0f} rh")
    print(describe("reactive", reactive, None, replay.oracle_rh))
    for minutes in windows:
        level = replay.level(minutes)
        for floor in (True, False):
            label = f"clairvoyant {minutes}-min level" + (" + floor" if floor else ", no floor")
            curve = replay.sweep(replay.clairvoyant(level, floor))
            print(describe(label, curve, reactive, replay.oracle_rh), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: {', '.join(DEFAULT)})")
    p.add_argument("--windows", default="5,15,30,60",
                   help="level windows in minutes, comma-separated (default 5,15,30,60)")
    args = p.parse_args(argv)
    names = args.scenarios or list(DEFAULT)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        p.error(f"--windows must be whole numbers separated by commas, got {args.windows!r}")
    if any(w < 1 for w in windows):
        p.error("--windows must be at least 1 minute each")
    for name in names:
        run(name, windows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
