"""What-if backtest: replay a trace through static, reactive, predictive and oracle scaling policies.

Time model, per bucket t of the step grid (the load y[t] arrives during bucket t):
- every policy decides at the start of bucket t from buckets < t only (the oracle excepted);
- a replica requested at decision time t is ready at t + startup delay (rounded up to whole steps);
  scale-down is immediate and removes starting pods before ready ones (as a ReplicaSet does);
- ready capacity during bucket t is ready replicas x capacity; unserved = max(0, y[t] - capacity);
- a missing bucket counts as zero load and is left out of the percentages.
Replica-hours count every running pod, starting or ready: a starting pod costs as much as a ready one.

Modules: `policies` (the four policies and the startup delay), `results` (KPIs, frontier, JSON shape and
the terminal table), `refits` (the rolling origin's fits, in parallel processes), `track` (what the
forecasts said at each decision, and the calibration at each refit), `run` (input on a regular grid, the
replays).
"""

from prescaler.backtest.policies import HPA_WINDOW, POLICIES, ready_from_requests
from prescaler.backtest.refits import FIT_TIMEOUT_S
from prescaler.backtest.results import (
    BacktestResult,
    BlendReport,
    ForecastQuality,
    FrontierComparison,
    FrontierPoint,
    PolicyKpis,
    ServiceLevelReport,
    compare_frontiers,
    format_table,
    frontier_summary,
)
from prescaler.backtest.run import (
    CALIBRATION_WARMUP,
    DEFAULT_QUANTILE,
    DEFAULT_WARMUP,
    FIT_WINDOW,
    MIN_WARMUP,
    evaluated_window,
    run_backtest,
)

__all__ = [
    "CALIBRATION_WARMUP",
    "DEFAULT_QUANTILE",
    "DEFAULT_WARMUP",
    "FIT_TIMEOUT_S",
    "FIT_WINDOW",
    "HPA_WINDOW",
    "MIN_WARMUP",
    "POLICIES",
    "BacktestResult",
    "BlendReport",
    "ForecastQuality",
    "FrontierComparison",
    "FrontierPoint",
    "PolicyKpis",
    "ServiceLevelReport",
    "compare_frontiers",
    "evaluated_window",
    "format_table",
    "frontier_summary",
    "ready_from_requests",
    "run_backtest",
]
