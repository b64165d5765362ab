"""Static checks of the Grafana dashboard (the chart's one JSON source) and the helpers that turn its panels'
queries into concrete PromQL and SQL (also used by the live test in tests/e2e/test_dashboard_live.py).

Drift checks: every metric a query uses exists in `prescaler.metrics` (the operator's registry) or
`prescaler.collect.metrics` (the collector's own registry) with the labels the query matches on,
every exported metric is charted (or listed in NOT_CHARTED with a reason), and every SQL statement reads only
the schema's tables and views. The checks with real tools (PostgreSQL, promtool, Grafana's dashboard-linter,
helm) are in tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from prescaler import db, metrics
from prescaler.collect import metrics as collector_metrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "prescaler"
DASHBOARD = CHART / "dashboards" / "prescaler.json"
PROMETHEUS_DS = "prometheus"
POSTGRES_DS = "grafana-postgresql-datasource"
VARIABLES = {"datasource": PROMETHEUS_DS, "pg": POSTGRES_DS}  # datasource variables and their plugin types
QUERY_VARIABLES = ("namespace", "scaler")

# The modules that define exported metrics: the operator's and the collector's (each has its own registry).
# Names as scraped (counters gain `_total`): the operator's list has them so; the collector's is read from its
# registry, whose families test_collector_registry_exports_exactly_its_metric_names ties to its own list.
METRIC_MODULES = (metrics, collector_metrics)
METRIC_NAMES: tuple[str, ...] = (*metrics.METRIC_NAMES, *(
    f.name + "_total" if f.type == "counter" else f.name for f in collector_metrics.REGISTRY.collect()))

# Metrics deliberately left off the dashboard, each with the reason. Empty: every metric is charted.
NOT_CHARTED: dict[str, str] = {}

# Labels Prometheus itself adds or histograms expose.
IMPLICIT_LABELS = {"job", "instance", "le", "__name__"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --- walking the dashboard and rendering its queries ------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One query of the dashboard: a panel target or an annotation."""

    where: str  # "panel 2 'Forecast vs observed load' A" or "annotation 'Scale actions'"
    panel_id: int | None
    kind: str  # "promql" or "sql"
    text: str
    instant: bool
    datasource: dict[str, Any]


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _query_of(where: str, panel_id: int | None, target: dict[str, Any], fallback_ds: dict[str, Any]) -> Query:
    ds = target.get("datasource") or fallback_ds
    if "expr" in target:
        return Query(where, panel_id, "promql", target["expr"], bool(target.get("instant")), ds)
    if "rawSql" in target:
        return Query(where, panel_id, "sql", target["rawSql"], False, ds)
    raise AssertionError(f"{where}: target is neither PromQL (expr) nor SQL (rawSql): {target}")


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    out: list[Query] = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel.get('title')!r} {target.get('refId')}"
            out.append(_query_of(where, panel["id"], target, panel.get("datasource") or {}))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if ann.get("builtIn"):
            continue
        out.append(_query_of(f"annotation {ann['name']!r}", None, ann["target"], ann.get("datasource") or {}))
    return out


@dataclass(frozen=True)
class Window:
    """What Grafana would substitute: the time range, the interval (query step) and the variables."""

    start: datetime
    end: datetime
    step: timedelta
    variables: dict[str, str]
    scrape_interval: timedelta = timedelta(seconds=15)

    @property
    def range(self) -> timedelta:
        return self.end - self.start

    @property
    def rate_interval(self) -> timedelta:
        # Grafana: max($__interval + scrape interval, 4 × scrape interval).
        return max(self.step + self.scrape_interval, 4 * self.scrape_interval)


def _seconds(td: timedelta) -> str:
    return f"{max(1, round(td.total_seconds()))}s"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _substitute_variables(text: str, variables: dict[str, str], where: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise AssertionError(f"{where}: unknown variable ${name}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def render_promql(expr: str, window: Window, where: str = "query") -> str:
    """The PromQL Grafana would send for this window (global interval variables and dashboard variables)."""
    globals_ = {
        "__rate_interval": _seconds(window.rate_interval),
        "__interval": _seconds(window.step),
        "__interval_ms": str(int(window.step.total_seconds() * 1000)),
        "__range": _seconds(window.range),
        "__range_s": str(round(window.range.total_seconds())),
        "__range_ms": str(int(window.range.total_seconds() * 1000)),
    }
    return _substitute_variables(expr, {**globals_, **window.variables}, where)


def render_sql(sql: str, window: Window, where: str = "query") -> str:
    """The SQL Grafana's PostgreSQL data source would run for this window (macros, then variables)."""
    start, end = f"'{_iso(window.start)}'", f"'{_iso(window.end)}'"
    sql = re.sub(r"\$__timeFilter\(\s*([\w.]+)\s*\)", lambda m: f"{m.group(1)} BETWEEN {start} AND {end}", sql)
    sql = sql.replace("$__timeFrom()", start).replace("$__timeTo()", end)
    sql = re.sub(r"\$__unixEpochFrom\(\)", str(int(window.start.timestamp())), sql)
    sql = re.sub(r"\$__unixEpochTo\(\)", str(int(window.end.timestamp())), sql)
    unknown = re.findall(r"\$__\w+\(", sql)
    if unknown:
        raise AssertionError(f"{where}: macro(s) not supported by this renderer: {unknown}")
    return _substitute_variables(sql, {
        "__interval": _seconds(window.step),
        "__interval_ms": str(int(window.step.total_seconds() * 1000)),
        **window.variables,
    }, where)


# --- what the code defines -------------------------------------------------------------------------------

@cache
def metric_labels() -> dict[str, tuple[str, ...]]:
    """Exported sample name → label names, from the metric objects of the operator's and collector's modules."""
    out: dict[str, tuple[str, ...]] = {}
    for obj in (o for module in METRIC_MODULES for o in vars(module).values()):
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = tuple(obj._labelnames)
        family = next(iter(obj.describe()))
        if family.type == "counter":
            out[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            out[family.name] = labels
            for suffix in HISTOGRAM_SUFFIXES:
                out[family.name + suffix] = labels
        else:
            out[family.name] = labels
    return out


def base_metric(sample_name: str) -> str:
    """The METRIC_NAMES entry a sample name belongs to (histogram series map to their family)."""
    if sample_name in METRIC_NAMES:
        return sample_name
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in METRIC_NAMES:
            return sample_name[: -len(suffix)]
    return sample_name


_SELECTOR = re.compile(r"\b(prescaler_\w+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def promql_metric_uses(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels matched in its selector) for every prescaler metric an expression reads."""
    return [(m.group(1), {label for label, _ in _MATCHER.findall(m.group(2) or "")})
            for m in _SELECTOR.finditer(expr)]


def schema_relations() -> set[str]:
    return set(db.metadata.tables) | set(db.VIEWS)


_SQL_RELATION = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.]*)", re.IGNORECASE)


# --- tests -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any]) -> list[Query]:
    return dashboard_queries(dashboard)


def sample_window() -> Window:
    end = datetime(2026, 3, 15, 20, 0, tzinfo=UTC)
    return Window(end - timedelta(hours=6), end, timedelta(seconds=30),
                  {"namespace": "fitness", "scaler": "workout-api"})


def test_dashboard_is_valid_json_for_grafana_10_and_11(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "prescaler" and dashboard["title"]
    assert dashboard["id"] is None, "an importable dashboard carries no database id"
    # Importable as-is by the sidecar and by hand: data sources come from variables, not from __inputs.
    assert "__inputs" not in dashboard
    text = DASHBOARD.read_text()
    assert "${DS_" not in text


def test_variables(dashboard: dict[str, Any]) -> None:
    by_name = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name, plugin in VARIABLES.items():
        assert by_name[name]["type"] == "datasource" and by_name[name]["query"] == plugin
    assert by_name["namespace"]["query"] == "label_values(prescaler_desired_replicas, namespace)"
    assert by_name["scaler"]["query"] == 'label_values(prescaler_desired_replicas{namespace=~"$namespace"}, name)'
    for name in QUERY_VARIABLES:
        assert by_name[name]["type"] == "query"
        assert by_name[name]["datasource"]["uid"] == "${datasource}"
        assert by_name[name]["refresh"] == 2, f"${name} must reload when the time range changes"
        assert not by_name[name]["multi"], "panels match $namespace/$scaler with =, one value each"


def test_panel_ids_unique_and_every_panel_described(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        assert p.get("title"), f"panel {p['id']} has no title"
        if p["type"] != "row":
            assert len(p.get("description", "")) >= 20, f"panel {p['id']} {p['title']!r} needs a description"
            assert p.get("targets"), f"panel {p['id']} {p['title']!r} has no queries"


def test_expected_panels_are_there(dashboard: dict[str, Any]) -> None:
    """The panels the design asks for, by stable id (an id change breaks links and saved views)."""
    titles = {p["id"]: p["title"] for p in all_panels(dashboard)}
    expected = {
        2: "Forecast vs observed load", 3: "Replicas: desired, current, ready, static peak",
        11: "Replica-hours saved vs static", 13: "Forecast error (sMAPE)", 14: "Under-provisioned minutes",
        15: "Scale actions", 21: "Forecast fit duration", 22: "Forecast age and reconcile duration",
        24: "Model in use", 25: "Errors by kind", 26: "Conditions", 31: "Traffic by hour of day × weekday",
        32: "Requests per hour", 33: "Top endpoints (last 7 days of data)", 35: "Latest stored forecast",
        41: "Collector lag", 42: "Rows written per minute", 43: "Backfill progress",
        44: "Messages dropped and samples skipped by reason", 46: "Collector errors by kind",
    }
    assert {i: titles.get(i) for i in expected} == expected
    anns = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    assert [a["name"] for a in anns] == ["Scale actions"]
    assert set(anns[0]["filter"]["ids"]) == {2, 3}


def test_queries_use_the_datasource_variables(queries: list[Query]) -> None:
    assert queries
    for q in queries:
        expected = "${datasource}" if q.kind == "promql" else "${pg}"
        plugin = PROMETHEUS_DS if q.kind == "promql" else POSTGRES_DS
        assert q.datasource == {"type": plugin, "uid": expected}, f"{q.where}: datasource {q.datasource}"


def test_promql_uses_only_exported_metrics_and_labels(queries: list[Query]) -> None:
    known = metric_labels()
    assert set(METRIC_NAMES) <= set(known), "METRIC_NAMES lists a metric the module does not define"
    for q in (q for q in queries if q.kind == "promql"):
        uses = promql_metric_uses(q.text)
        assert uses, f"{q.where}: reads no prescaler metric: {q.text}"
        for name, labels in uses:
            assert base_metric(name) in METRIC_NAMES, f"{q.where}: unknown metric {name}"
            allowed = set(known[name]) | IMPLICIT_LABELS
            assert labels <= allowed, f"{q.where}: {name} has no label(s) {labels - allowed}"
        for group in _GROUPING.findall(q.text):
            names = {g.strip() for g in group.split(",") if g.strip()}
            allowed = set().union(*(known[n] for n, _ in uses)) | IMPLICIT_LABELS
            assert names <= allowed, f"{q.where}: groups by unknown label(s) {names - allowed}"


def test_band_values_match_the_operator() -> None:
    """The forecast panel selects band="yhat|lower|upper": the values the operator exports."""
    text = DASHBOARD.read_text()
    bands = set(re.findall(r'band=\\"(\w+)\\"', text))
    assert bands == {"yhat", "lower", "upper"}
    source = (REPO / "operator" / "prescaler" / "reconcile" / "tick.py").read_text()
    for band in bands:
        assert f'"{band}"' in source, f"the operator never sets band={band!r}"


def test_every_metric_is_charted_or_listed(queries: list[Query]) -> None:
    used = {base_metric(n) for q in queries if q.kind == "promql" for n, _ in promql_metric_uses(q.text)}
    assert set(NOT_CHARTED) <= set(METRIC_NAMES), "NOT_CHARTED names a metric that does not exist"
    assert not (set(NOT_CHARTED) & used), f"charted but listed as not charted: {set(NOT_CHARTED) & used}"
    missing = set(METRIC_NAMES) - used - set(NOT_CHARTED)
    assert not missing, f"exported but neither charted nor in NOT_CHARTED: {sorted(missing)}"


def test_collector_registry_exports_exactly_its_metric_names() -> None:
    """The collector's registry is its own (served by `prescaler collect`): every family it exports is listed in
    its METRIC_NAMES, so the check above covers every metric the collector exports."""
    exported = {family.name for family in collector_metrics.REGISTRY.collect()}
    assert exported == set(collector_metrics.METRIC_NAMES)
    assert all(n.startswith("prescaler_collector_") for n in exported)
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES)), "the operator and the collector share a metric name"


def test_counters_are_only_read_through_increase_or_rate(queries: list[Query]) -> None:
    for q in (q for q in queries if q.kind == "promql"):
        for m in re.finditer(r"\bprescaler_\w+_total\b", q.text):
            before = q.text[: m.start()]
            assert re.search(r"\b(increase|rate|irate)\(\s*$", before), f"{q.where}: raw counter {m.group(0)}"


def test_sql_reads_only_schema_relations(queries: list[Query]) -> None:
    relations = schema_relations()
    assert {"traffic_log", "forecasts", "forecast_points", "scaling_decisions", "traffic_profile"} <= relations
    for q in (q for q in queries if q.kind == "sql"):
        used = {r.lower() for r in _SQL_RELATION.findall(q.text)}
        assert used, f"{q.where}: reads no table"
        assert used <= relations, f"{q.where}: unknown table(s)/view(s) {used - relations}"


def test_renderers_substitute_grafana_macros() -> None:
    window = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 6, tzinfo=UTC), timedelta(seconds=30),
                    {"namespace": "ns", "scaler": "web"}, scrape_interval=timedelta(seconds=1))
    assert render_promql('increase(x{a="$namespace", b="${scaler}"}[$__range]) + rate(y[$__rate_interval])',
                         window) == 'increase(x{a="ns", b="web"}[21600s]) + rate(y[31s])'
    assert render_sql("WHERE $__timeFilter(d.ts) AND k = '$namespace/$scaler' AND t < $__timeTo()", window) == (
        "WHERE d.ts BETWEEN '2026-03-01T00:00:00Z' AND '2026-03-01T06:00:00Z' AND k = 'ns/web'"
        " AND t < '2026-03-01T06:00:00Z'")
    with pytest.raises(AssertionError, match="unknown variable"):
        render_promql("x{a=\"$nope\"}", window)
    with pytest.raises(AssertionError, match="not supported"):
        render_sql("SELECT $__timeGroup(ts, 1h)", window)
