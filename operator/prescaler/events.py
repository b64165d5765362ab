"""Scheduled traffic events (a challenge launch, a push, a holiday): the CSV calendar, its import into
`traffic_events`, and the lift that makes every forecaster see them.

The lift, per event kind, is learned from the kind's past windows in the history:
- every event window is masked (NaN) before the model is fit, so the model learns the traffic *without*
  events: a seasonal copy does not repeat last week's launch, a smoother is not dragged by it;
- for each past window, the no-event baseline is the median of the same time of week in up to four
  neighbouring weeks (masked history, so other events never count as baseline; days when no week has data);
- the ratio actual / baseline is taken in `LIFT_BINS` equal parts of each window (a launch peaks early and
  fades), and per kind the median over its past events is the lift; the lowest and highest ratios widen
  the band;
- in an upcoming window the forecast (yhat, lower, upper) is multiplied by its kind's lift at that position.
  A kind with no past window uses the event's stated `lift_percent` if it has one, else is left alone.

Why a baseline from neighbouring weeks rather than the model's own forecast of the past window: that would
take one extra fit per past event per refit (seconds each for `auto`), and the forecast being lifted is fit on
the same masked history, so it estimates the same no-event load the baseline does.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd

from prescaler import forecasting
from prescaler.errors import InputError
from prescaler.forecasting.interface import FitResult, Forecast, Forecaster
from prescaler.ingest import _Problems, _zone, csv_rows

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

REQUIRED_COLUMNS = ("name", "kind", "start", "end")
OPTIONAL_COLUMNS = ("service",)
# Equal parts of an event window, each with its own lift: a launch's first hour is not its last.
LIFT_BINS = 4
# Neighbouring weeks (then days) whose same time stands for the no-event baseline.
BASELINE_WEEKS = 4
BASELINE_DAYS = 2
# A ratio outside this range says more about a broken baseline (an outage, a near-zero night) than about
# the event.
_RATIO_RANGE = (0.05, 20.0)
_WEEK = timedelta(days=7)
_DAY = timedelta(days=1)


# ---------------------------------------------------------------------------------------------------------
# The CSV calendar


def read_events_csv(path: Path, *, timezone: str = "UTC") -> pd.DataFrame:
    """A validated `name,kind,start,end[,service]` file as a frame (name, kind, service, start, end, line).

    Naive timestamps are wall time in `timezone`; zone-qualified ones keep their offset. Every problem
    (bad header, wrong field count, empty name or kind, unparseable or nonexistent time, end not after
    start, an event listed twice) is reported with its line, up to five at once, as an InputError.
    """
    zone = _zone(timezone)
    path = Path(path)
    problems = _Problems(path)
    reader = csv_rows(path)
    header: list[str] | None = None
    col: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    first_seen: dict[tuple[str, datetime], int] = {}
    rows_read = 0
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                _check_header(path, line, row, header)
                col = {c: header.index(c) for c in header}
                continue
            rows_read += 1
            if len(row) != len(header):
                problems.add(line, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
                continue
            name, kind = row[col["name"]].strip(), row[col["kind"]].strip()
            service = row[col["service"]].strip() if "service" in col else ""
            if not name:
                problems.add(line, "empty name")
                continue
            if not kind:
                problems.add(line, "empty kind")
                continue
            start, why_start = _instant(row[col["start"]].strip(), zone, timezone)
            if start is None:
                problems.add(line, f"start: {why_start}")
                continue
            end, why_end = _instant(row[col["end"]].strip(), zone, timezone)
            if end is None:
                problems.add(line, f"end: {why_end}")
                continue
            if end <= start:
                what = "before" if end < start else "equal to"
                problems.add(line, f"end {row[col['end']].strip()} is {what} start {row[col['start']].strip()}")
                continue
            key = (name, start)
            if key in first_seen:
                problems.add(line, f"event {name!r} at {start.isoformat()} is listed twice (first on line "
                                   f"{first_seen[key]})")
                continue
            first_seen[key] = line
            rows.append({"name": name, "kind": kind, "service": service or None, "start": start, "end": end,
                         "line": line})
    except csv.Error as exc:
        problems.add(reader.line_num, f"malformed CSV: {exc}")
    problems.raise_if_any()
    if header is None:
        raise InputError(f"{path}: empty file (expected a header name,kind,start,end and data rows); "
                         "nothing was written")
    if rows_read == 0:
        raise InputError(f"{path}: no events after the header; nothing was written")
    frame = pd.DataFrame(rows, columns=["name", "kind", "service", "start", "end", "line"])
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    frame["lift_percent"] = np.nan
    return frame


def _check_header(path: Path, line: int, row: list[str], header: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if not (missing or unknown or dupes):
        return
    detail = []
    if missing:
        detail.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        detail.append(f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
    if dupes:
        detail.append(f"repeated column(s) {', '.join(dupes)}")
    raise InputError(f"{path}: line {line}: bad header {','.join(row)!r}: {'; '.join(detail)} "
                     "(expected name,kind,start,end and optionally service); nothing was written")


def _instant(raw: str, zone: tzinfo | None, zone_name: str) -> tuple[datetime | None, str]:
    """The UTC instant of an ISO timestamp, or None and why not.

    Unlike a trace, an event has no neighbouring rows to tell the two occurrences of a repeated fall-back
    hour apart, so an ambiguous wall time is refused rather than guessed.
    """
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        return None, f"cannot parse timestamp {raw!r} (expected ISO 8601, e.g. 2024-01-31T14:00:00)"
    if stamp.tzinfo is not None:
        return stamp.astimezone(UTC), ""
    if zone is None:
        return stamp.replace(tzinfo=UTC), ""
    early, late = stamp.replace(tzinfo=zone, fold=0), stamp.replace(tzinfo=zone, fold=1)
    if early.utcoffset() != late.utcoffset():
        if early.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != stamp:
            return None, f"{raw} does not exist in {zone_name} (clocks go forward)"
        return None, f"{raw} happens twice in {zone_name} (clocks go back): give its UTC offset, e.g. {raw}+01:00"
    return early.astimezone(UTC), ""


@dataclass(frozen=True)
class EventImportResult:
    rows_read: int
    written: int  # inserted, or changed kind, service or end
    unchanged: int


def import_events(engine: Engine, path: Path, *, timezone: str = "UTC") -> EventImportResult:
    """Validate the whole file, then upsert it into `traffic_events` in one transaction.

    The key is (name, start): a re-import changes nothing, an edited kind, service or end updates the row.
    A stated `lift_percent` already stored (the simulator writes one) is kept.
    """
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    from prescaler.db import traffic_events, unavailable_on_error

    frame = read_events_csv(path, timezone=timezone)
    rows = [
        {"name": name, "kind": kind, "service": service, "starts_at": pd.Timestamp(start).to_pydatetime(),
         "ends_at": pd.Timestamp(end).to_pydatetime()}
        for name, kind, service, start, end in zip(
            frame["name"], frame["kind"], frame["service"], frame["start"], frame["end"], strict=True)
    ]
    t = traffic_events
    insert = postgresql.insert(t)
    changed = sa.or_(*(t.c[c].is_distinct_from(insert.excluded[c]) for c in ("kind", "service", "ends_at")))
    # RETURNING yields a row per insert and per update that its WHERE let through: the rows written.
    upsert = insert.on_conflict_do_update(
        constraint="traffic_events_name_starts_at_key",
        set_={c: insert.excluded[c] for c in ("kind", "service", "ends_at")},
        where=changed,
    ).returning(t.c.id)
    with unavailable_on_error(f"importing events from {path}"), engine.begin() as conn:
        written = len(conn.execute(upsert, rows).all())
    return EventImportResult(rows_read=len(rows), written=written, unchanged=len(rows) - written)


def for_service(events: pd.DataFrame, service: str | None) -> pd.DataFrame:
    """The events that apply to `service`: its own and those without a service (None: every event)."""
    if service is None or "service" not in events.columns:
        return events
    own = events["service"].isna() | (events["service"] == service)
    return events[own].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# Windows on a grid


def normalise(events: pd.DataFrame | None) -> pd.DataFrame:
    """name, kind, start, end (UTC), lift_percent; accepts the simulator's starts_at/ends_at as well."""
    cols = ["name", "kind", "start", "end", "lift_percent"]
    if events is None or events.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    frame = events.rename(columns={"starts_at": "start", "ends_at": "end"})
    out = pd.DataFrame({
        "name": frame["name"].astype(str) if "name" in frame else frame["kind"].astype(str),
        "kind": (frame["kind"] if "kind" in frame else frame["name"]).astype(str),
        "start": pd.to_datetime(frame["start"], utc=True),
        "end": pd.to_datetime(frame["end"], utc=True),
        "lift_percent": pd.to_numeric(frame["lift_percent"], errors="coerce") if "lift_percent" in frame
        else np.nan,
    })
    return out[out["end"] > out["start"]].reset_index(drop=True)


@dataclass(frozen=True)
class _Window:
    kind: str
    start: pd.Timestamp
    end: pd.Timestamp
    lift_percent: float  # NaN when none is stated


def _windows(ev: pd.DataFrame) -> list[_Window]:
    return [
        _Window(str(kind), pd.Timestamp(start), pd.Timestamp(end), float(lift))
        for kind, start, end, lift in zip(ev["kind"], ev["start"], ev["end"], ev["lift_percent"], strict=True)
    ]


def _step_of(index: pd.DatetimeIndex) -> pd.Timedelta:
    diffs = np.diff(index.asi8)
    positive = diffs[diffs > 0]
    return pd.Timedelta(int(np.median(positive)) if len(positive) else 0, unit="ns")


def _overlap(index: pd.DatetimeIndex, step: pd.Timedelta, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Buckets [t, t + step) that overlap [start, end)."""
    t = index.asi8
    return (t < end.value) & (t + step.value > start.value)


def _position_bins(index: pd.DatetimeIndex, step: pd.Timedelta, start: pd.Timestamp,
                   end: pd.Timestamp) -> np.ndarray:
    """Which of the LIFT_BINS parts of [start, end) each bucket's midpoint falls in (clipped to the ends)."""
    mid = index.asi8 + step.value / 2
    frac = (mid - start.value) / (end.value - start.value)
    return np.clip(np.floor(frac * LIFT_BINS), 0, LIFT_BINS - 1).astype(int)


def mask_events(history: pd.Series, events: pd.DataFrame | None) -> pd.Series:
    """`history` with every bucket an event overlaps set missing."""
    ev = normalise(events)
    if ev.empty or len(history) < 2:
        return history
    index = pd.DatetimeIndex(history.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    step = _step_of(index)
    covered = np.zeros(len(index), dtype=bool)
    for w in _windows(ev):
        covered |= _overlap(index, step, w.start, w.end)
    if not covered.any():
        return history
    out = history.astype(float).copy()
    out[covered] = np.nan
    return out


# ---------------------------------------------------------------------------------------------------------
# Learning the lift


@dataclass(frozen=True)
class KindLift:
    """The multiplier of one event kind per part of its window: median (yhat), lowest and highest (band)."""

    kind: str
    ratio: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    events: int  # past events it was learned from; 0 = the stated lift
    source: str  # "learned" | "stated"

    @property
    def mean(self) -> float:
        return float(np.mean(self.ratio))


def _baseline(masked: np.ndarray, positions: np.ndarray, week: int, day: int) -> np.ndarray:
    """Median of the same time in neighbouring weeks (both sides); where no week has data, neighbouring days."""
    n = len(masked)

    def neighbours(period: int, count: int) -> np.ndarray:
        offsets = [k * period for k in range(1, count + 1)] + [-k * period for k in range(1, count + 1)]
        out = np.full((len(positions), len(offsets)), np.nan)
        for j, off in enumerate(offsets):
            idx = positions + off
            ok = (idx >= 0) & (idx < n)
            out[ok, j] = masked[idx[ok]]
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are expected: they stay NaN
        base = np.nanmedian(neighbours(week, BASELINE_WEEKS), axis=1)
        missing = np.isnan(base)
        if missing.any():
            base[missing] = np.nanmedian(neighbours(day, BASELINE_DAYS)[missing], axis=1)
    return base


def learn_lifts(history: pd.Series, events: pd.DataFrame | None) -> dict[str, KindLift]:
    """Per kind, the lift its past events (wholly inside `history`) had over the no-event baseline.

    Kinds without a usable past event get their stated `lift_percent` when one is given.
    """
    ev = normalise(events)
    if ev.empty or len(history) < 2:
        return {}
    index = pd.DatetimeIndex(history.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    step = _step_of(index)
    values = history.to_numpy(dtype=float)
    masked = mask_events(pd.Series(values, index=index), ev).to_numpy(dtype=float)
    week = max(1, round(_WEEK / step.to_pytimedelta()))
    day = max(1, round(_DAY / step.to_pytimedelta()))
    first, end = index[0], index[-1] + step

    per_kind: dict[str, list[np.ndarray]] = {}
    for w in _windows(ev):
        if w.start < first or w.end > end:
            continue  # not wholly observed: an event still running says nothing yet about its whole shape
        inside = np.flatnonzero(_overlap(index, step, w.start, w.end))
        if len(inside) == 0:
            continue
        actual = values[inside]
        base = _baseline(masked, inside, week, day)
        ok = np.isfinite(actual) & np.isfinite(base) & (base > 0)
        if not ok.any():
            continue
        bins = _position_bins(index[inside], step, w.start, w.end)
        whole = float(actual[ok].sum() / base[ok].sum())
        ratios = np.full(LIFT_BINS, np.nan)
        for b in range(LIFT_BINS):
            sel = ok & (bins == b)
            if sel.any():
                ratios[b] = float(actual[sel].sum() / base[sel].sum())
        # A window shorter than LIFT_BINS buckets leaves parts empty: they take the whole window's ratio.
        ratios[np.isnan(ratios)] = whole
        per_kind.setdefault(w.kind, []).append(np.clip(ratios, *_RATIO_RANGE))

    lifts: dict[str, KindLift] = {}
    for kind, rows in per_kind.items():
        table = np.vstack(rows)
        lifts[kind] = KindLift(kind, tuple(np.median(table, axis=0).tolist()), tuple(table.min(axis=0).tolist()),
                               tuple(table.max(axis=0).tolist()), events=len(rows), source="learned")
    for w in _windows(ev):
        if w.kind not in lifts and np.isfinite(w.lift_percent):
            r = (max(_RATIO_RANGE[0], 1 + w.lift_percent / 100),) * LIFT_BINS
            lifts[w.kind] = KindLift(w.kind, r, r, r, events=0, source="stated")
    return lifts


def apply_lifts(forecast: Forecast, events: pd.DataFrame | None, lifts: dict[str, KindLift]) -> Forecast:
    """The forecast with yhat, lower and upper multiplied by each kind's lift inside its upcoming windows.

    Where events overlap, the larger lift wins (they are not compounded).
    """
    ev = normalise(events)
    if ev.empty or not lifts or len(forecast.ds) == 0:
        return forecast
    ds = forecast.ds
    step = _step_of(ds) if len(ds) > 1 else pd.Timedelta(0)
    if step <= pd.Timedelta(0):
        return forecast
    mid = np.full(len(ds), np.nan)
    lo = np.full(len(ds), np.nan)
    hi = np.full(len(ds), np.nan)
    for w in _windows(ev):
        lift = lifts.get(w.kind)
        if lift is None:
            continue
        inside = _overlap(ds, step, w.start, w.end)
        if not inside.any():
            continue
        bins = _position_bins(ds[inside], step, w.start, w.end)
        mid[inside] = np.fmax(mid[inside], np.asarray(lift.ratio)[bins])
        lo[inside] = np.fmax(lo[inside], np.asarray(lift.low)[bins])
        hi[inside] = np.fmax(hi[inside], np.asarray(lift.high)[bins])
    if np.isnan(mid).all():
        return forecast
    yhat = np.asarray(forecast.yhat, dtype=float)
    lower = np.asarray(forecast.lower, dtype=float)
    upper = np.asarray(forecast.upper, dtype=float)
    new_yhat = np.where(np.isnan(mid), yhat, yhat * mid)
    new_lower = np.minimum(np.where(np.isnan(lo), lower, lower * lo), new_yhat)
    new_upper = np.maximum(np.where(np.isnan(hi), upper, upper * hi), new_yhat)
    extra = dict(forecast.extra)
    extra.update({f"event_lift:{k}": v.mean for k, v in lifts.items()})
    return dataclasses.replace(forecast, yhat=new_yhat, lower=new_lower, upper=new_upper, extra=extra)


def windows_within(events: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp) -> list[dict[str, Any]]:
    """The events overlapping [start, end), as name, kind, start, end records (for reports and JSON)."""
    ev = normalise(events)
    return [
        {"name": str(name), "kind": str(kind), "start": pd.Timestamp(s), "end": pd.Timestamp(e)}
        for name, kind, s, e in zip(ev["name"], ev["kind"], ev["start"], ev["end"], strict=True)
        if pd.Timestamp(s) < end and pd.Timestamp(e) > start
    ]


def lifts_of(forecast: Forecast | None) -> dict[str, float]:
    """The mean lift per kind a forecast was moved by (as `apply_lifts` records it)."""
    if forecast is None:
        return {}
    prefix = "event_lift:"
    return {k[len(prefix):]: float(v) for k, v in forecast.extra.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------------
# Any forecaster, event-aware


def fit_predict(name: str, history: pd.Series, horizon: timedelta, *, events: pd.DataFrame | None = None,
                timeout_s: float | None = None, select_horizon: timedelta | None = None) -> FitResult:
    """`forecasting.fit_predict` with events moving every model: fit on the masked history, then lift.

    Without events this is `forecasting.fit_predict` itself. The model is given no events of its own, so
    Prophet's regressors do not count a lift twice. When masking leaves too little history to fit, the model
    is fit on the unmasked history (the lift still applies).
    """
    ev = normalise(events)
    if ev.empty:
        return forecasting.fit_predict(name, history, horizon, events=None, timeout_s=timeout_s,
                                       select_horizon=select_horizon)
    lifts = learn_lifts(history, ev)
    try:
        result = forecasting.fit_predict(name, mask_events(history, ev), horizon, events=None,
                                         timeout_s=timeout_s, select_horizon=select_horizon)
    except forecasting.ForecastUnavailable:
        result = forecasting.fit_predict(name, history, horizon, events=None, timeout_s=timeout_s,
                                         select_horizon=select_horizon)
    lifted = apply_lifts(result.forecast, ev, lifts)
    if lifted is not result.forecast:
        applied = ", ".join(f"{k} ×{v.mean:.2f}" for k, v in sorted(lifts.items()))
        result = dataclasses.replace(result, forecast=lifted, reason=f"{result.reason}; event lift {applied}")
    return result


def fit_in_worker(name: str, history: pd.Series, horizon: timedelta, events: pd.DataFrame | None,
                  select_horizon: timedelta | None) -> FitResult:
    """The operator's `FitPool` fit (module-level, so it pickles by reference): the events stored for a series
    move every model in the live operator as in the backtest. No limit of its own: the pool kills the worker."""
    return fit_predict(name, history, horizon, events=events, select_horizon=select_horizon)


class EventAware:
    """Wraps any `Forecaster`: fit on history with event windows masked, forecast lifted in upcoming windows."""

    def __init__(self, inner: Forecaster) -> None:
        self.inner = inner
        self._events: pd.DataFrame | None = None
        self._lifts: dict[str, KindLift] = {}

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def lifts(self) -> dict[str, KindLift]:
        return dict(self._lifts)

    def fit(self, history: pd.Series, events: pd.DataFrame | None = None) -> Self:
        self._events = normalise(events)
        self._lifts = learn_lifts(history, self._events)
        self.inner.fit(mask_events(history, self._events), None)
        return self

    def predict(self, horizon: timedelta) -> Forecast:
        return apply_lifts(self.inner.predict(horizon), self._events, self._lifts)


def describe(lifts: dict[str, KindLift]) -> str:
    """One line per kind, e.g. "challenge ×1.52 (first quarter ×1.71) from 2 past events"."""
    parts = []
    for kind, lift in sorted(lifts.items()):
        src = f"from {lift.events} past event{'s' if lift.events != 1 else ''}" if lift.source == "learned" \
            else "stated"
        parts.append(f"{kind} ×{lift.mean:.2f} (first part ×{lift.ratio[0]:.2f}) {src}")
    return "; ".join(parts) if parts else "none"
