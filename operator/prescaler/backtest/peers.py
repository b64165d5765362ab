"""Peer autoscalers in the backtest, from their published algorithms: what a user would otherwise install.

- `ehpa`: Crane's EffectiveHorizontalPodAutoscaler with DSP prediction (gocrane/crane);
- `phpa`: the Predictive Horizontal Pod Autoscaler with Holt-Winters (jthomperoo/predictive-horizontal-pod-autoscaler).

Both sit on the HPA, and so do they here: the same sizing as the backtest's reactive policy (a replica serves
`capacity`, with the same headroom, so the frontier sweeps them alike), scale-up at once, HPA's 5-minute
scale-down stabilisation, the same startup delay. They differ from reactive only in what they size from.
Written from the projects' documentation (cited at each step); no code of theirs is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from prescaler.backtest.results import BacktestResult
from prescaler.planning import Recommendation, ScalingPolicy, apply_replica_limits

PEERS = ("ehpa", "phpa")
TITLES = {
    "ehpa": "Crane EffectiveHPA (DSP prediction max over 1 h, max with the observed metric)",
    "phpa": "PHPA (Holt-Winters on the HPA replica count, one step ahead, max with it)",
}

# --- Crane EffectiveHPA, DSP ------------------------------------------------------------------------------
# Docs: https://github.com/gocrane/crane/blob/main/docs/tutorials/using-effective-hpa-to-scaling-with-effectiveness.md
#   - "predictionWindowSeconds: 3600" in every example; the prediction metric and the original metric each
#     propose replicas and "The **largest** one will be picked as the new scale"; when the prediction is not
#     ready, "it will use the actual cpu utilization to do autoscaling" (FAQ).
#   - The value served for the prediction metric is the largest predicted sample within
#     [now, now + predictionWindowSeconds] ("use the largest value will bring up the scaling up and defer the
#     scaling down", the metric adapter's own comment, pkg/metricprovider/external_metric_provider.go).
# Docs: https://github.com/gocrane/crane/blob/main/docs/tutorials/timeseriees-forecasting-by-dsp.md
#   - preprocessing: gaps filled by straight lines between neighbours; samples above P99.9 or below P0.1
#     replaced by the previous sample;
#   - only fixed periods (1 d, 7 d) are tried, on a series cut to a whole number of periods (e.g. 3 d for 1 d,
#     14 d for 7 d); a period is a candidate when its FFT amplitude beats the P99 of the largest amplitude of
#     100 random permutations of the series, and it is confirmed when the circular autocorrelation at its lag
#     sits on a hill top (a line fitted on each side rises on the left and falls on the right); the highest
#     confirmed peak is the main period;
#   - estimators: `maxValue` (the largest value at the same time of the period over past periods) and `fft`
#     (drop high-frequency, low-amplitude components, inverse FFT, the result is the next period), each
#     times 1 + marginFraction; Crane uses the estimator that fits best;
#   - the TimeSeriesPrediction example: historyLength "15d", fft estimator with lowAmplitudeThreshold 1.0,
#     minNumOfSpectrumItems 10, maxNumOfSpectrumItems 20; highFrequencyThreshold = 1/3600 Hz is the doc's
#     own example of ignoring components shorter than an hour.
# marginFraction is 0 here: the headroom sweep plays its part, as it does for every sized policy.
DSP_HISTORY = timedelta(days=15)
DSP_PERIODS = (timedelta(days=1), timedelta(days=7))
DSP_PERMUTATIONS = 100
DSP_OUTLIER_QUANTILES = (0.001, 0.999)
DSP_LOW_AMPLITUDE = 1.0
DSP_HIGH_FREQUENCY_HZ = 1 / 3600
DSP_MIN_ITEMS = 10
DSP_MAX_ITEMS = 20
EHPA_PREDICTION_WINDOW = timedelta(hours=1)

# --- PHPA, Holt-Winters -----------------------------------------------------------------------------------
# Docs: https://predictive-horizontal-pod-autoscaler.readthedocs.io/en/latest/ (repository docs/index.md):
#   "doing the same calculations as the Horizontal Pod Autoscaler does to determine how many replicas a
#   resource should have, then applies statistical models against the calculated replica count and the
#   replica history".
# Docs: docs/user-guide/getting-started.md: decisionType "maximum" (the default, docs/reference/configuration.md)
#   means "the target replicas will be set to whichever is higher between the calculated HPA value and the
#   predicted model value"; the model predicts one sync period ahead.
# Docs: docs/user-guide/models.md: Holt-Winters (statsmodels ExponentialSmoothing) with additive trend and
#   season, `seasonalPeriods` in sync periods and `storedSeasons: 4` in the example; alpha, beta and gamma are
#   required, hard-coded or fetched at run time by a tuning hook. examples/simple-holt-winters/README.md
#   describes the season as one day.
# Here the sync period is the backtest step, the season one day, 4 seasons stored, and the tuning hook is
# modelled as the best (least squared one-step error) alpha, beta, gamma of a grid on the stored history,
# re-tuned at every refit of the predictive policy: the well-tuned PHPA its docs ask users to build. The
# grid is searched on the stored load itself: additive Holt-Winters is scale-free (scaling the series scales
# every state and error alike), so these are the parameters of the replica demand at any headroom, found
# once rather than once per headroom of the frontier.
# The one-step forecast is rounded up to whole replicas. The model is the Holt-Winters recursion run on the
# stream, started from the first two stored seasons (level = first season's mean, trend = the change of
# the mean to the second season): PHPA refits every sync period on its stored window, which with fixed
# smoothing parameters differs only in the starting state that four seasons of smoothing wash out.
PHPA_SEASON = timedelta(days=1)
PHPA_STORED_SEASONS = 4
_ALPHAS = (0.1, 0.3, 0.5, 0.7, 0.9)
_BETAS = (0.01, 0.1, 0.3, 0.6, 0.9)
_GAMMAS = (0.05, 0.2, 0.4, 0.6, 0.9)


# ---------------------------------------------------------------------------------------------------------
# The HPA both peers run on


def hpa_requests(ds: pd.DatetimeIndex, recommended: np.ndarray, initial: int, policy: ScalingPolicy) -> np.ndarray:
    """Replicas requested per bucket from a recommendation per bucket (negative = none: hold).

    The planner's limits as the backtest's reactive policy applies them (`apply_replica_limits`): bounds, HPA's
    scale-down stabilisation, then up at once.
    """
    out = np.zeros(len(recommended), dtype=np.int64)
    cur = max(1, initial)
    recent: tuple[Recommendation, ...] = ()
    times = ds.to_pydatetime()
    for t, r in enumerate(recommended):
        if r >= 0:
            limited = apply_replica_limits(policy, int(r), current=cur, now=times[t], recent=recent)
            cur, recent = limited.desired, limited.recommendations
        out[t] = cur
    return out


def _replicas(load: np.ndarray, policy: ScalingPolicy) -> np.ndarray:
    """policy.replicas_for per value (NaN stays -1: no recommendation)."""
    out = np.full(len(load), -1, dtype=np.int64)
    for i, y in enumerate(load):
        if not math.isnan(y):
            out[i] = policy.replicas_for(float(y))
    return out


# ---------------------------------------------------------------------------------------------------------
# DSP


def _fill_and_clean(x: np.ndarray) -> np.ndarray | None:
    """Gaps filled by straight lines, extreme samples replaced by their predecessor (Crane's preprocessing)."""
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return None
    idx = np.arange(len(x))
    y = np.interp(idx, idx[ok], x[ok])
    lo, hi = np.quantile(y, DSP_OUTLIER_QUANTILES)
    for i in range(1, len(y)):
        if y[i] > hi or y[i] < lo:
            y[i] = y[i - 1]
    return y


def _hill_top(acf: np.ndarray, lag: int) -> bool:
    """A line fitted on each side of `lag` rises on the left and falls on the right."""
    w = max(2, lag // 24)
    if lag - w < 1 or lag + w >= len(acf):
        return False
    left = np.arange(lag - w, lag + 1)
    right = np.arange(lag, lag + w + 1)
    return bool(np.polyfit(left, acf[left], 1)[0] > 0 and np.polyfit(right, acf[right], 1)[0] < 0)


def dsp_period(x: np.ndarray, step: timedelta, rng: np.random.Generator) -> int | None:
    """The main period in steps among 1 d and 7 d, or None when the series is not periodic."""
    best: tuple[float, int] | None = None
    for period in DSP_PERIODS:
        m = round(period / step)
        cycles = len(x) // m
        if m < 2 or cycles < 2:
            continue
        seg = x[-cycles * m:]
        amp = np.abs(np.fft.rfft(seg))
        maxima = [float(np.abs(np.fft.rfft(rng.permutation(seg)))[2:].max()) for _ in range(DSP_PERMUTATIONS)]
        if not amp[cycles] > np.quantile(maxima, 0.99):
            continue
        sd = seg.std()
        if sd <= 0:
            continue
        z = (seg - seg.mean()) / sd
        acf = np.fft.irfft(np.abs(np.fft.rfft(z)) ** 2, n=len(z)) / len(z)
        if not _hill_top(acf, m):
            continue
        if best is None or acf[m] > best[0]:
            best = (float(acf[m]), m)
    return None if best is None else best[1]


def _fft_estimate(seg: np.ndarray, m: int, step: timedelta) -> np.ndarray:
    """The last period of the series rebuilt from its largest low-frequency components."""
    n = len(seg)
    spectrum = np.fft.rfft(seg)
    amp = np.abs(spectrum) / n
    freq = np.fft.rfftfreq(n, d=step.total_seconds())
    order = np.argsort(-amp[1:], kind="stable") + 1  # the mean (k = 0) is always kept
    eligible = [k for k in order if amp[k] >= DSP_LOW_AMPLITUDE and freq[k] <= DSP_HIGH_FREQUENCY_HZ]
    keep = eligible[:DSP_MAX_ITEMS]
    for k in order:  # at least DSP_MIN_ITEMS, the largest first, filters or not
        if len(keep) >= DSP_MIN_ITEMS:
            break
        if k not in keep:
            keep.append(k)
    kept = np.zeros_like(spectrum)
    kept[0] = spectrum[0]
    kept[keep] = spectrum[keep]
    return np.asarray(np.fft.irfft(kept, n=n)[-m:], dtype=float)


def _max_value_estimate(seg: np.ndarray, m: int) -> np.ndarray:
    return np.asarray(seg.reshape(-1, m).max(axis=0), dtype=float)


def dsp_forecast(history: np.ndarray, step: timedelta, rng: np.random.Generator) -> np.ndarray | None:
    """Crane's DSP prediction of the next period (its length in steps), or None when not periodic."""
    x = _fill_and_clean(history[-max(2, round(DSP_HISTORY / step)):].astype(float))
    if x is None:
        return None
    m = dsp_period(x, step, rng)
    if m is None:
        return None
    seg = x[-(len(x) // m) * m:]
    train, actual = seg[:-m], seg[-m:]

    def fft(s: np.ndarray) -> np.ndarray:
        return _fft_estimate(s, m, step)

    def max_value(s: np.ndarray) -> np.ndarray:
        return _max_value_estimate(s, m)

    # The estimator that best predicted the last period from the ones before it makes the forecast.
    best = min((fft, max_value), key=lambda est: float(np.mean((est(train) - actual) ** 2)))
    return np.clip(best(seg), 0.0, None)


# ---------------------------------------------------------------------------------------------------------
# Holt-Winters on replica counts


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, g = np.meshgrid(_ALPHAS, _BETAS, _GAMMAS, indexing="ij")
    return a.ravel(), b.ravel(), g.ravel()


def holt_winters_one_step(y: np.ndarray, m: int, n_fit: int) -> np.ndarray:
    """One-step-ahead forecasts (out[t] predicts y[t + 1]) of additive Holt-Winters, season m.

    alpha, beta and gamma minimise the squared one-step error on y[:n_fit]; y needs two seasons to start.
    """
    return _hw_forecasts(y, m, *tune_holt_winters(y[:n_fit], m))


def tune_holt_winters(y: np.ndarray, m: int) -> tuple[float, float, float]:
    """The (alpha, beta, gamma) of the grid with the least squared one-step error on y."""
    alpha, beta, gamma = _grid()
    i = int(np.argmin(_hw_errors(y, m, alpha, beta, gamma)))
    return float(alpha[i]), float(beta[i]), float(gamma[i])


def _hw_start(y: np.ndarray, m: int) -> tuple[float, float, np.ndarray]:
    """Level, trend and season from the first two seasons."""
    first = float(y[:m].mean())
    trend = (float(y[m:2 * m].mean()) - first) / m if len(y) >= 2 * m else 0.0
    return first, trend, y[:m] - first


def _hw_errors(y: np.ndarray, m: int, alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Squared one-step errors from the second season on, summed, for every (alpha, beta, gamma) at once."""
    c = len(alpha)
    level0, trend0, season0 = _hw_start(y, m)
    level, trend = np.full(c, level0), np.full(c, trend0)
    season = np.repeat(season0[:, None], c, axis=1)
    sse = np.zeros(c)
    for t in range(m, len(y)):
        s_old = season[t % m]
        err = y[t] - (level + trend + s_old)
        sse += err * err
        new_level = alpha * (y[t] - s_old) + (1 - alpha) * (level + trend)
        trend = beta * (new_level - level) + (1 - beta) * trend
        season[t % m] = gamma * (y[t] - new_level) + (1 - gamma) * s_old
        level = new_level
    return sse


def _hw_forecasts(y: np.ndarray, m: int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """out[t] = the forecast of y[t + 1] made after y[t] (NaN in the first season)."""
    level, trend, season0 = _hw_start(y, m)
    season = season0.tolist()
    out = np.full(len(y), np.nan)
    values = y.tolist()
    for t in range(m, len(y)):
        s_old = season[t % m]
        new_level = alpha * (values[t] - s_old) + (1 - alpha) * (level + trend)
        trend = beta * (new_level - level) + (1 - beta) * trend
        season[t % m] = gamma * (values[t] - new_level) + (1 - gamma) * s_old
        level = new_level
        out[t] = level + trend + season[(t + 1) % m]
    return out


# ---------------------------------------------------------------------------------------------------------
# Running them over a backtest


@dataclass
class PeerRun:
    """Everything the peers need from one backtest, with the headroom-independent work done once.

    `values` is the whole regular series (warm-up included); bucket `e0` is the first evaluated one.
    Forecasts are made at the same origins as the predictive policy's refits (every `refit_steps`).
    """

    values: np.ndarray
    e0: int
    ds: pd.DatetimeIndex
    step: timedelta
    refit_steps: int
    initial_load: float
    seed: int = 0

    def __post_init__(self) -> None:
        self._ehpa_load: np.ndarray | None = None
        self._hw_params: dict[int, tuple[float, float, float]] = {}

    @property
    def n(self) -> int:
        return len(self.ds)

    @property
    def prev_load(self) -> np.ndarray:
        return self.values[self.e0 - 1:self.e0 - 1 + self.n]

    def ehpa_load(self) -> np.ndarray:
        """The prediction metric per evaluated bucket: the forecast's max over the prediction window."""
        if self._ehpa_load is None:
            window = max(0, math.ceil(EHPA_PREDICTION_WINDOW / self.step - 1e-9))
            out = np.full(self.n, np.nan)
            rng = np.random.default_rng(self.seed)
            for o in range(0, self.n, self.refit_steps):
                span = min(self.refit_steps, self.n - o)
                fc = dsp_forecast(self.values[:self.e0 + o], self.step, rng)
                if fc is None:
                    continue  # not periodic: the prediction metric is not ready, the HPA runs on the original
                need = span + window
                tiled = np.tile(fc, math.ceil(need / len(fc)))[:need]  # a periodic forecast repeats
                peaks = np.lib.stride_tricks.sliding_window_view(tiled, window + 1).max(axis=1)
                out[o:o + span] = peaks[:span]
            self._ehpa_load = out
        return self._ehpa_load

    def requests(self, name: str, policy: ScalingPolicy) -> np.ndarray:
        initial = policy.replicas_for(self.initial_load)
        if name == "ehpa":
            return hpa_requests(self.ds, self._ehpa_recommendations(policy), initial, policy)
        if name == "phpa":
            return hpa_requests(self.ds, self._phpa_recommendations(policy), initial, policy)
        raise ValueError(f"unknown peer policy {name!r}")

    def _ehpa_recommendations(self, policy: ScalingPolicy) -> np.ndarray:
        return np.maximum(_replicas(self.prev_load, policy), _replicas(self.ehpa_load(), policy))

    def _phpa_recommendations(self, policy: ScalingPolicy) -> np.ndarray:
        # The HPA's calculation at every bucket of the whole series, from the load observed before it; while
        # the metric is missing the replica history repeats the last calculation.
        observed = np.concatenate([[np.nan], self.values[:-1]])
        calc = _replicas(observed, policy).astype(float)
        calc[calc < 0] = np.nan
        calc = pd.Series(calc).ffill().bfill().to_numpy()
        if np.isnan(calc).all():
            return np.full(self.n, -1, dtype=np.int64)
        calc = np.maximum(calc, policy.min_replicas)
        demand = pd.Series(observed).ffill().bfill().to_numpy()
        here = _replicas(self.prev_load, policy)
        predicted = np.full(self.n, -1, dtype=np.int64)
        m = max(2, round(PHPA_SEASON / self.step))
        for o in range(0, self.n, self.refit_steps):
            g0 = self.e0 + o
            span = min(self.refit_steps, self.n - o)
            start = max(0, g0 - PHPA_STORED_SEASONS * m + 1)
            if g0 + 1 - start < 2 * m:
                continue  # fewer than two seasons stored: the PHPA acts as a plain HPA
            y = calc[start:g0 + span]
            if o not in self._hw_params:
                self._hw_params[o] = tune_holt_winters(demand[start:g0 + 1], m)
            fc = _hw_forecasts(y, m, *self._hw_params[o])
            # Decision at bucket g sees calc[g] and forecasts g + 1.
            step_ahead = fc[g0 - start:g0 - start + span]
            ok = np.isfinite(step_ahead)
            seg = np.full(span, -1, dtype=np.int64)
            seg[ok] = np.ceil(np.maximum(step_ahead[ok], 0) - 1e-9).astype(np.int64)
            predicted[o:o + span] = seg
        return np.where(here >= 0, np.maximum(here, predicted), -1)


# ---------------------------------------------------------------------------------------------------------
# Comparing at equal cost


@dataclass(frozen=True)
class EqualCost:
    """At one predictive frontier point: every policy's unserved % at the same replica-hours."""

    headroom_pct: float
    replica_hours: float
    times_oracle: float | None
    unserved_pct: dict[str, float | None]  # per policy; None = outside that policy's swept range


def unserved_at(result: BacktestResult, policy: str, replica_hours: float) -> float | None:
    """A policy's unserved % at `replica_hours`, interpolated on its frontier (no extrapolation)."""
    points = sorted(result.frontier.get(policy, []), key=lambda p: (p.replica_hours, -p.unserved_pct))
    if not points:
        return None
    xs = np.array([p.replica_hours for p in points])
    ys = np.array([p.unserved_pct for p in points])
    if not xs[0] - 1e-9 <= replica_hours <= xs[-1] + 1e-9:
        return None
    return float(np.interp(replica_hours, xs, ys))


def equal_cost(result: BacktestResult, policies: Sequence[str] | None = None) -> list[EqualCost]:
    """Each predictive frontier point with every other frontier policy's unserved at its replica-hours."""
    names = [p for p in (policies or result.frontier) if p in result.frontier]
    oracle = result.kpis.get("oracle")
    rows = []
    for p in result.frontier.get("predictive", []):
        ratio = p.replica_hours / oracle.replica_hours if oracle and oracle.replica_hours > 0 else None
        unserved = {name: (p.unserved_pct if name == "predictive" else unserved_at(result, name, p.replica_hours))
                    for name in names}
        rows.append(EqualCost(p.headroom_pct, p.replica_hours, ratio, unserved))
    return rows


def equal_cost_summary(result: BacktestResult) -> str:
    """The equal-cost table for the terminal."""
    rows = equal_cost(result)
    if not rows:
        return ""
    names = list(rows[0].unserved_pct)
    head = f"{'headroom':>9}{'replica-h':>12}{'x oracle':>10}" + "".join(f"{n:>12}" for n in names)
    lines = [head]
    for r in rows:
        ratio = "-" if r.times_oracle is None else f"{r.times_oracle:.2f}"
        cells = "".join(f"{'-' if v is None else f'{v:.3f}%':>12}" for v in r.unserved_pct.values())
        lines.append(f"{r.headroom_pct:>8g}%{r.replica_hours:>12,.0f}{ratio:>10}{cells}")
    return "\n".join(lines)
