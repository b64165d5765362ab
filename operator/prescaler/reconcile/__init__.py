"""The reconciler: conditions, forecast keeping, admission and the tick, one module each."""

from prescaler.reconcile.conditions import CONDITION_TYPES, Cond, merge_conditions
from prescaler.reconcile.forecasts import CachedForecast, ForecastKeeper, PendingFit, ScalerRef, ScalerState
from prescaler.reconcile.tick import Outcome, Reconciler, Services, TargetLookup

__all__ = [
    "CONDITION_TYPES", "CachedForecast", "Cond", "ForecastKeeper", "Outcome", "PendingFit", "Reconciler",
    "ScalerRef", "ScalerState", "Services", "TargetLookup", "merge_conditions",
]
