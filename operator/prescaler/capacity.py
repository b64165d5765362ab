"""Capacity warnings: when the forecast within the horizon needs more replicas than the scaler may ask for. Pure.

The need at each forecast step is sized as the next peak is (`status.nextPeak`): the provisioning quantile
with the headroom, over capacity. The limit is `spec.maxReplicas`, or the HPA's maxReplicas when the scaler
sets an HPA's floor and the HPA allows fewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from prescaler.forecasting.interface import Forecast
from prescaler.planning import Quantile, ScalingPolicy, replicas_array


@dataclass(frozen=True)
class Shortfall:
    """The forecast's need above the limit: from when, the worst step, and by how many replicas."""

    first: datetime  # the first forecast step that needs more than the limit
    at: datetime  # the step that needs the most
    needed: int
    limit: int
    limit_name: str  # "maxReplicas" or "HPA web's maxReplicas"

    @property
    def replicas(self) -> int:
        return self.needed - self.limit

    def message(self, now: datetime) -> str:
        return (f"the forecast needs {self.needed} replicas at {self.at:%Y-%m-%d %H:%M} UTC "
                f"(in {_ahead(self.at, now)}), {self.replicas} more than {self.limit_name} {self.limit}; "
                f"above it from {self.first:%H:%M} UTC")


@dataclass(frozen=True)
class Headroom:
    """No shortfall: the most the forecast needs within the horizon, against the limit."""

    needed: int
    limit: int
    limit_name: str
    until: datetime

    def message(self) -> str:
        return (f"the forecast until {self.until:%Y-%m-%d %H:%M} UTC needs at most {self.needed} replicas, "
                f"within {self.limit_name} {self.limit}")


def capacity_shortfall(forecast: Forecast, policy: ScalingPolicy, *, now: datetime, quantile: Quantile,
                       hpa: tuple[str, int] | None = None) -> Shortfall | Headroom | None:
    """Whether the forecast from the step in force at `now` to its end needs more than the limit. `hpa` is the
    (name, maxReplicas) of the HPA whose floor the scaler sets. None when no forecast step lies ahead."""
    limit, limit_name = policy.max_replicas, "maxReplicas"
    if hpa is not None and hpa[1] < limit:
        limit, limit_name = hpa[1], f"HPA {hpa[0]}'s maxReplicas"
    ns = forecast.ns
    step = int(ns[1] - ns[0]) if len(ns) >= 2 else 0
    lo = int(np.searchsorted(ns, pd.Timestamp(now).value - step, side="right"))
    values = np.asarray(forecast.upper if quantile == "upper" else forecast.yhat, dtype=float)[lo:]
    if len(values) == 0 or np.all(np.isnan(values)):
        return None
    needed = replicas_array(policy, np.nan_to_num(values, nan=0.0), policy.headroom_factor)
    worst = int(np.argmax(needed))
    until = forecast.ds[-1].to_pydatetime() + pd.Timedelta(step, unit="ns").to_pytimedelta()
    if needed[worst] <= limit:
        return Headroom(needed=int(needed[worst]), limit=limit, limit_name=limit_name, until=until)
    first = int(np.argmax(needed > limit))
    return Shortfall(first=forecast.ds[lo + first].to_pydatetime(), at=forecast.ds[lo + worst].to_pydatetime(),
                     needed=int(needed[worst]), limit=limit, limit_name=limit_name)


def _ahead(at: datetime, now: datetime) -> str:
    ahead = max(timedelta(0), at - now)
    if ahead < timedelta(hours=1):
        return f"{int(ahead.total_seconds() // 60)}m"
    return f"{int(ahead.total_seconds() // 3600)}h"
