"""The operator's side of the service level: each scaler's record, and its calibration at each refit.

The pure maths is `prescaler.calibration`; this keeps, per PredictiveScaler, the forecasts it used (a
`ForecastRecord`, in memory: after a restart the record builds up again, and until it holds enough samples
the planner sizes by headroom and says so), reads the traffic that came (one history read per new forecast,
in a thread) and calibrates once per forecast. The reconciler calls `calibration_for` before it plans and
puts `status` into the scaler's status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from prescaler import history
from prescaler.calibration import (
    CALIBRATION_WINDOW,
    Calibration,
    ForecastRecord,
    calibrate,
    samples_from_forecasts,
    status_fields,
)
from prescaler.errors import DataUnavailable
from prescaler.forecasting.interface import Forecast
from prescaler.spec import ScalerSpec


@dataclass
class _Calibrated:
    generated_at: datetime
    settings: tuple[object, ...]
    calibration: Calibration
    status: dict[str, Any]


class ServiceLevelKeeper:
    """Per scaler (namespace, name): the record of forecasts used and the calibration of the newest."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._records: dict[tuple[str, str], ForecastRecord] = {}
        self._calibrated: dict[tuple[str, str], _Calibrated] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._records.pop((namespace, name), None)
        self._calibrated.pop((namespace, name), None)

    async def calibration_for(self, namespace: str, name: str, spec: ScalerSpec, source: history.TrafficSource,
                              forecast: Forecast | None, generated_at: datetime | None,
                              now: datetime) -> tuple[Calibration | None, dict[str, Any]]:
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
        start = now - CALIBRATION_WINDOW - spec.lead_time - 2 * spec.step
        try:
            actuals = await asyncio.to_thread(history.read_history, self.engine, source, spec.service, start, now,
                                              spec.step)
        except DataUnavailable:
            # No record to read: plan as configured (headroom), calibrate at the next forecast.
            return None, {}
        samples = samples_from_forecasts(record.entries, actuals, now=now, lead_time=spec.lead_time)
        cal = calibrate(samples, service_level=spec.service_level, headroom_percent=float(spec.headroom_percent))
        status = status_fields(cal, samples, lead=spec.lead_time + (now - generated_at))
        self._calibrated[key] = _Calibrated(generated_at, settings, cal, status)
        return cal, status
