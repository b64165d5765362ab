"""The dashboard's scorecard row: its panels, by stable id, chart the scorecard's, the gate's and the capacity
warning's metrics (the drift checks of every panel are in the dashboard's own tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prescaler import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "prescaler" / "dashboards" / "prescaler.json"


def test_the_scorecard_row_charts_the_new_metrics() -> None:
    panels = {p["id"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert panels[60]["type"] == "row" and panels[60]["title"].startswith("Scorecard and promotion")
    used: dict[int, set[str]] = {
        i: {m for t in panels[i]["targets"] for m in re.findall(r"\bprescaler_\w+", t["expr"])} for i in range(61, 66)}
    assert used == {
        61: {"prescaler_scorecard_cost_ratio", "prescaler_scorecard_unserved_ratio"},
        62: {"prescaler_scorecard_replica_seconds"},
        63: {"prescaler_scorecard_unserved_percent"},
        64: {"prescaler_effective_auto"},
        65: {"prescaler_capacity_shortfall_replicas"},
    }
    assert set().union(*used.values()) <= set(metrics.METRIC_NAMES)
    # The row sits between the KPIs and the model's health, and nothing overlaps it.
    row_y = panels[60]["gridPos"]["y"]
    assert panels[16]["gridPos"]["y"] + panels[16]["gridPos"]["h"] == row_y
    below = [p["gridPos"]["y"] for i, p in panels.items() if not 60 <= i <= 65 and p["gridPos"]["y"] > row_y]
    bottom = max(panels[i]["gridPos"]["y"] + panels[i]["gridPos"]["h"] for i in range(60, 66))
    assert min(below) == bottom
