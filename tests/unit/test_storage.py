"""Storage rules that need no server: retention per table, and the chart's schema for retention."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from prescaler import storage
from prescaler.errors import InputError
from prescaler.history import Retention, TrafficSource

CHART = Path(__file__).resolve().parents[2] / "charts" / "prescaler"


def test_retention_by_table_takes_the_longest_wish() -> None:
    days = timedelta(days=1)
    sources = {
        "a": TrafficSource(retention=Retention(raw=30 * days, daily=400 * days)),
        "b": TrafficSource(retention=Retention(raw=90 * days, daily=100 * days)),
        "c": TrafficSource(table="edge.hits", retention=Retention(raw=7 * days)),
        "d": TrafficSource(table="edge.hits"),
        "e": TrafficSource(table="other"),
    }
    plan = storage.retention_by_table(sources)
    assert plan == {"traffic_log": Retention(raw=90 * days, daily=400 * days), "edge.hits": Retention()}
    with pytest.raises(InputError, match=r"data source 'x': retention of rollups .* not to 'edge.hits'"):
        storage.retention_by_table({"x": TrafficSource(table="edge.hits", retention=Retention(hourly=days))})


@pytest.mark.parametrize(("retention", "valid"), [
    ("90d", True), ("forever", True), ({"raw": "90d", "5m": "400d", "daily": "forever"}, True),
    ("90 days", False), ({"weekly": "1w"}, False), ({}, False),
])
def test_chart_schema_checks_retention(retention: object, valid: bool) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["sources"]["default"]["retention"] = retention
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(values))
    assert not errors if valid else errors
