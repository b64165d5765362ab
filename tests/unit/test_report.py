"""The HTML report: self-contained, escaped, with the KPI table, the charts and the settings."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prescaler import backtest, report


def periodic(days: int, freq: str = "1h") -> pd.Series:
    idx = pd.date_range("2024-03-01", periods=int(pd.Timedelta(days=days) / pd.Timedelta(freq)), freq=freq,
                        tz="UTC")
    hod = idx.hour.to_numpy()
    values = np.where((hod >= 8) & (hod < 20), 5000.0, 800.0) + 30 * (idx.dayofweek.to_numpy() % 3)
    return pd.Series(values, index=idx)


@pytest.fixture(scope="module")
def result() -> backtest.BacktestResult:
    series = periodic(10)
    series.iloc[200:203] = np.nan
    return backtest.run_backtest(series, capacity=250.0, startup_delay=timedelta(hours=1),
                                 model="seasonal-naive", last=timedelta(days=6), progress=False,
                                 frontier_headrooms=(0, 10, 30))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "data") and value:
                self.links.append(value)


def test_report_is_self_contained_with_table_and_charts(result: backtest.BacktestResult, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    report.write_html(result, out)
    html = out.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(html)
    assert parser.links == []
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert parser.tags.count("svg") == 3  # whole window, detail around the peak, frontier
    # The KPI table has one row per policy with its replica-hours.
    table = re.search(r'<table id="kpis">(.*?)</table>', html, re.S)
    assert table is not None
    for name, k in result.kpis.items():
        assert f"<td>{report._label(name)}</td><td>{k.replica_hours:,.1f}</td>" in table.group(1)
    assert "startup delay" in html and "capacity" in html
    assert "replica-hours" in html


def test_report_escapes_text(result: backtest.BacktestResult) -> None:
    evil = '<script>alert("x")</script>'
    hostile = replace(result, forecast=replace(result.forecast, model=evil, summary=evil, models={evil: 2, "x": 1}),
                      settings={**result.settings, "series": "a<b>&c"})
    html = report.render_html(hostile)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "a&lt;b&gt;&amp;c" in html


def test_a_mixed_run_shows_its_summary_and_folds_away_every_combination(result: backtest.BacktestResult) -> None:
    models = {"auto(holt-winters+prophet)": 3, "auto(prophet+seasonal-naive)": 2, "seasonal-naive": 1}
    summary = "auto: holt-winters 50%, prophet 33%, seasonal-naive 17% of 6 refits (5 mixes, by leading model)"
    mixed = replace(result, forecast=replace(result.forecast, model="auto→" + ", ".join(models), summary=summary,
                                             models=models))
    html = report.render_html(mixed)
    assert html.count(summary) == 2  # the subtitle and the forecast line
    details = re.search(r"<details><summary>Models of the 6 refits \(3 different\)</summary>(.*?)</details>", html,
                        re.S)
    assert details is not None
    assert "<td>auto(holt-winters+prophet)</td><td>3</td><td>50%</td>" in details.group(1)
    # Outside the folded table no combination is listed.
    assert "auto(" not in html.replace(details.group(0), "")
    # A run on one model has nothing to fold away.
    assert "<details>" not in report.render_html(result)


def test_long_series_are_downsampled_without_losing_the_peak(tmp_path: Path) -> None:
    series = periodic(30, freq="5min")
    series.iloc[-500] = 20000.0  # a one-bucket spike must survive downsampling
    res = backtest.run_backtest(series, capacity=500.0, startup_delay=timedelta(minutes=10),
                                model="seasonal-naive", last=timedelta(days=20), progress=False,
                                frontier_headrooms=(10,))
    html = report.render_html(res)
    first_chart = html.split("<svg", 2)[1]
    paths = re.findall(r'<path d="([^"]*)" fill="none" stroke="#1f2937"', first_chart)
    assert len(paths) == 1
    points = paths[0].count("L") + paths[0].count("M")
    assert points <= report.MAX_POINTS
    # The spike is still the top of the load line, at its true height relative to the ordinary peaks.
    ys = [float(p.split(",")[1]) for p in re.findall(r"[ML]([\d.]+,[\d.]+)", paths[0])]
    heights = sorted({round(report.HEIGHT - report.MARGIN_B - y, 1) for y in ys}, reverse=True)
    assert heights[0] / heights[1] == pytest.approx(20000.0 / 5060.0, rel=0.01)


def test_peers_stand_beside_the_policies_at_equal_cost(result: backtest.BacktestResult) -> None:
    html = report.render_html(result)
    kpis = re.search(r'<table id="kpis">(.*?)</table>', html, re.S)
    assert kpis is not None
    assert "<td>Crane EffectiveHPA (ehpa)</td>" in kpis.group(1) and "<td>PHPA (phpa)</td>" in kpis.group(1)
    assert "DSP prediction max over 1 h" in html and "Holt-Winters on the HPA replica count" in html
    table = re.search(r'<table id="equal-cost">(.*?)</table>', html, re.S)
    assert table is not None
    head = re.findall(r"<th>(.*?)</th>", table.group(1))
    assert head == ["predictive headroom", "replica-hours", "× oracle", "reactive unserved", "predictive unserved",
                    "Crane EffectiveHPA (ehpa) unserved", "PHPA (phpa) unserved"]
    assert len(re.findall(r"<tr><td>", table.group(1))) == len(result.frontier["predictive"])
    # Each peer has a frontier line and, in the detail chart, a thin ready-capacity line of its colour.
    frontier_chart = html.split("<svg")[-1]
    detail_chart = html.split("<svg")[-2]
    for name in ("ehpa", "phpa"):
        assert f'stroke="{report.COLOURS[name]}" stroke-width="2"' in frontier_chart
        assert f'stroke="{report.COLOURS[name]}" stroke-width="1"' in detail_chart
    # The settings table leaves the peers' descriptions to the note above.
    settings = html.split("<h2>Settings</h2>")[1]
    assert "DSP prediction" not in settings


def test_events_are_shaded_and_their_lift_stated() -> None:
    series = periodic(10)
    launches = pd.DataFrame({
        "name": [f"launch {i}" for i in range(4)], "kind": "launch",
        "start": pd.to_datetime(["2024-03-03T10:00", "2024-03-05T14:00", "2024-03-07T09:00", "2024-03-09T13:00"],
                                utc=True)})
    launches["end"] = launches["start"] + pd.Timedelta(hours=3)
    for s, e in zip(launches["start"], launches["end"], strict=True):
        series[(series.index >= s) & (series.index < e)] *= 2.0
    res = backtest.run_backtest(series, capacity=250.0, startup_delay=timedelta(hours=1), model="seasonal-naive",
                                last=timedelta(days=6), progress=False, frontier_headrooms=(10,), events=launches)
    html = report.render_html(res)
    assert "Scheduled events: 4 in the calendar, 3 in the evaluated window" in html
    assert re.search(r"latest refit: launch ×(1\.9\d|2\.0\d)", html)
    whole = html.split("<svg")[1]
    assert whole.count(f'fill="{report.COLOURS["event"]}"') == 3
    assert "<title>launch 3 (launch) 2024-03-09 13:00 – 2024-03-09 16:00 UTC</title>" in whole
    settings = html.split("<h2>Settings</h2>")[1]
    assert "event windows" not in settings and "event lifts" in settings


def test_the_service_level_run_reports_served_and_coverage() -> None:
    res = backtest.run_backtest(periodic(21), capacity=250.0, startup_delay=timedelta(hours=1),
                                model="seasonal-naive", last=timedelta(days=7), progress=False,
                                frontier_headrooms=(0, 10), service_level=99.9)
    assert res.service_level is not None
    html = report.render_html(res)
    line = re.search(r'<p id="service-level">(.*?)</p>', html)
    assert line is not None, "the report has no service-level line"
    assert f"served {res.service_level.served_pct:.3f}%" in line.group(1)
    assert "Service level 99.9%" in line.group(1) and "covered" in line.group(1)
    # Without a target there is no such line.
    assert 'id="service-level"' not in report.render_html(
        backtest.run_backtest(periodic(10), capacity=250.0, startup_delay=timedelta(hours=1),
                              model="seasonal-naive", last=timedelta(days=6), progress=False,
                              frontier_headrooms=(0, 10)))
