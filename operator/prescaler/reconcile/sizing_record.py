"""The operator's side of the sizing: each scaler's record of forecasts, and its calibration at each refit.

The pure maths is `prescaler.sizing`; this keeps, per PredictiveScaler, the forecasts it used (a
`ForecastRecord`, in memory: after a restart the record builds up again, and until it holds enough samples
the planner sizes by headroom and says so), reads the traffic that came (one history read per new forecast,
in a thread) and calibrates once per forecast. The reconciler calls `for_tick` before it plans: the
calibration (trust, and the multipliers with a service level), the level correction of the last hour (one
short history read per tick) and the status fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from prescaler import history, metrics
from prescaler.errors import DataUnavailable
from prescaler.forecasting.interface import Forecast
from prescaler.sizing.calibration import (
    InForce,
    RealizedSizing,
    SizingCalibration,
    calibrate_steered,
    realized_sizing,
    status_fields,
)
from prescaler.sizing.level_correction import level_correction, level_correction_steps
from prescaler.sizing.samples import CALIBRATION_WINDOW, ForecastRecord, samples_from_forecasts
from prescaler.spec import ScalerSpec


@dataclass
class _Calibrated:
    generated_at: datetime
    settings: tuple[object, ...]
    calibration: SizingCalibration
    status: dict[str, Any]


# The scheduled windows' factor on the observed load at decision times (int64 ns): `WindowKeeper.rise_at`.
RiseAt = Callable[[np.ndarray], np.ndarray]


class SizingRecordKeeper:
    """Per scaler (namespace, name): the record of forecasts used and the calibration of the newest."""

    def __init__(self, reads: history.SharedReads) -> None:
        self.reads = reads
        self._records: dict[tuple[str, str], ForecastRecord] = {}
        self._calibrated: dict[tuple[str, str], _Calibrated] = {}
        # The calibrations each scaler planned with, so the next one is steered by how they served.
        self._history: dict[tuple[str, str], list[InForce]] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._records.pop((namespace, name), None)
        self._calibrated.pop((namespace, name), None)
        self._history.pop((namespace, name), None)

    async def calibration_for(self, namespace: str, name: str, spec: ScalerSpec, source: history.TrafficSource,
                              forecast: Forecast | None, generated_at: datetime | None,
                              now: datetime, rise_at: RiseAt | None = None,
                              ) -> tuple[SizingCalibration | None, dict[str, Any]]:
        """The calibration to plan with and its status fields; (None, {}) until there is a forecast."""
        if forecast is None or generated_at is None:
            return None, {}
        key = (namespace, name)
        record = self._records.get(key)
        ahead = spec.stale_after + spec.lead_time + spec.step
        if record is None or record.keep_ahead != ahead:
            record = self._records[key] = ForecastRecord(keep_ahead=ahead)
        record.add(generated_at, forecast)
        settings = (spec.service_level, spec.headroom_percent, spec.lead_time, spec.step, spec.service)
        done = self._calibrated.get(key)
        if done is not None and done.generated_at == generated_at and done.settings == settings:
            return done.calibration, done.status
        # Samples only start with the oldest recorded forecast: after a restart the record holds one forecast of
        # minutes ago, and reading the whole window for each of a fleet's scalers would delay its first decisions.
        oldest = record.entries[0][0]
        start = max(now - CALIBRATION_WINDOW, _floor(oldest, spec.step)) - spec.lead_time - 2 * spec.step
        try:
            actuals = await self.reads.read(source, spec.service, start, now, spec.step)
        except DataUnavailable:
            # No record to read: plan as configured (headroom), calibrate at the next forecast.
            return None, {}
        samples = samples_from_forecasts(record.entries, actuals, now=now, lead_time=spec.lead_time,
                                         stabilization=spec.stabilization_window, unit=spec.capacity_per_step,
                                         rise_at=rise_at)
        past = [h for h in self._history.get(key, []) if done is not None and done.settings == settings
                and h.since >= pd.Timestamp(now - CALIBRATION_WINDOW).value]
        in_force = calibrate_steered(samples, past, service_level=spec.service_level,
                                     headroom_percent=float(spec.headroom_percent),
                                     since=pd.Timestamp(generated_at).value)
        self._history[key] = [*past, in_force]
        cal = in_force.calibration
        lead = spec.lead_time + (now - generated_at)
        sizing = realized_sizing(cal, samples, lead=lead)
        status = status_fields(cal, samples, lead=lead, sizing=sizing)
        _export(namespace, name, spec, sizing, cal)
        self._calibrated[key] = _Calibrated(generated_at, settings, cal, status)
        return cal, status

    async def for_tick(self, namespace: str, name: str, spec: ScalerSpec, source: history.TrafficSource,
                       forecast: Forecast | None, generated_at: datetime | None,
                       now: datetime, rise_at: RiseAt | None = None,
                       ) -> tuple[SizingCalibration | None, float, dict[str, Any]]:
        """What `plan` takes from the record this tick: the calibration, the level correction (1: none) and
        the status fields. Without a forecast or traffic: (None, 1.0, {}), the manual sizing."""
        calibration, status = await self.calibration_for(namespace, name, spec, source, forecast, generated_at,
                                                         now, rise_at)
        if calibration is None:
            return None, 1.0, {}
        return calibration, await self._level_correction(namespace, name, spec, source, now), status

    async def _level_correction(self, namespace: str, name: str, spec: ScalerSpec,
                                source: history.TrafficSource, now: datetime) -> float:
        """The last hour's load against the forecasts that were in force for it (`level_correction`)."""
        record = self._records.get((namespace, name))
        if record is None or not record.entries:
            return 1.0
        steps = level_correction_steps(spec.step)
        end = _floor(now, spec.step)
        try:
            actual = await self.reads.read(source, spec.service, end - steps * spec.step, end, spec.step)
        except DataUnavailable:
            return 1.0
        return level_correction(np.asarray(actual, dtype=float), _in_force(record, pd.DatetimeIndex(actual.index)))


def _export(namespace: str, name: str, spec: ScalerSpec, sizing: RealizedSizing, cal: SizingCalibration) -> None:
    """The service-level gauges; a figure the record cannot give yet (or a scaler without a target) is absent,
    never a made-up 0."""
    values = {metrics.SERVICE_LEVEL_TARGET: spec.service_level, metrics.SERVICE_LEVEL_SERVED: sizing.served_percent,
              metrics.SERVICE_LEVEL_COVERAGE: sizing.coverage_percent, metrics.CALIBRATED_QUANTILE: sizing.quantile,
              metrics.SERVICE_LEVEL_AT_RISK: (1.0 if cal.at_risk else 0.0) if cal.ready else None}
    for gauge, value in values.items():
        if value is None:
            metrics.remove(gauge, namespace, name)
        else:
            metrics.child(gauge, namespace, name).set(value)


def _floor(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + math.floor((t - epoch) / step) * step


def _in_force(record: ForecastRecord, buckets: pd.DatetimeIndex) -> np.ndarray:
    """Per bucket, yhat of the newest recorded forecast generated by its start (NaN where none covers it)."""
    out = np.full(len(buckets), np.nan)
    at = np.asarray(buckets.as_unit("ns").asi8)
    for generated_at, fc in record.entries:  # oldest first: newer forecasts overwrite
        if len(fc.ns) == 0:
            continue
        pos = np.searchsorted(fc.ns, at).clip(0, len(fc.ns) - 1)
        use = (fc.ns[pos] == at) & (at >= pd.Timestamp(generated_at).value)
        out[use] = np.asarray(fc.yhat, dtype=float)[pos[use]]
    return out
