"""What-if backtest: replay a trace through static, reactive, predictive and oracle scaling policies.

Time model, per bucket t of the step grid (the load y[t] arrives during bucket t):
- every policy decides at the start of bucket t from buckets < t only (the oracle excepted);
- a replica requested at decision time t is ready at t + startup delay (rounded up to whole steps);
  scale-down is immediate and removes starting pods before ready ones (as a ReplicaSet does);
- ready capacity during bucket t is ready replicas x capacity; unserved = max(0, y[t] - capacity);
- a missing bucket counts as zero load and is left out of the percentages.
Replica-hours count every running pod, starting or ready: a starting pod costs as much as a ready one.

Modules: `policies` (the four policies and the startup delay), `results` (KPIs, frontier, JSON shape and
the terminal table), `run` (input on a regular grid, refits on a rolling origin, the replay).
"""

from prescaler.backtest.policies import HPA_WINDOW, POLICIES, ready_from_requests
from prescaler.backtest.results import (
    BacktestResult,
    ForecastQuality,
    FrontierComparison,
    FrontierPoint,
    PolicyKpis,
    compare_frontiers,
    format_table,
    frontier_summary,
)
from prescaler.backtest.run import (
    DEFAULT_QUANTILE,
    DEFAULT_WARMUP,
    FIT_TIMEOUT_S,
    FIT_WINDOW,
    MIN_WARMUP,
    run_backtest,
)

__all__ = [
    "DEFAULT_QUANTILE",
    "DEFAULT_WARMUP",
    "FIT_TIMEOUT_S",
    "FIT_WINDOW",
    "HPA_WINDOW",
    "MIN_WARMUP",
    "POLICIES",
    "BacktestResult",
    "ForecastQuality",
    "FrontierComparison",
    "FrontierPoint",
    "PolicyKpis",
    "compare_frontiers",
    "format_table",
    "frontier_summary",
    "ready_from_requests",
    "run_backtest",
]
