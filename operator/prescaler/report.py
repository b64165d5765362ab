"""A self-contained HTML report of a backtest: inline SVG charts, the KPI table, the settings.

No script, stylesheet, font or image is loaded from anywhere: the file opens offline as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prescaler.backtest import BacktestResult
from prescaler.backtest.peers import PEERS, TITLES, equal_cost
from prescaler.backtest.results import blend_line, service_level_line
from prescaler.durations import format_duration

MAX_POINTS = 3000
WIDTH, HEIGHT = 1100, 380
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 78, 20, 34, 64
COLOURS = {
    "load": "#1f2937",
    "band": "#93c5fd",
    "yhat": "#2563eb",
    "predictive": "#16a34a",
    "reactive": "#ea580c",
    "static": "#6b7280",
    "oracle": "#7c3aed",
    "ehpa": "#0891b2",
    "phpa": "#db2777",
    "event": "#fde68a",
    "up": "#16a34a",
    "down": "#dc2626",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1160px;
color:#111827;padding:0 16px}
h1{font-size:1.5rem;margin-bottom:4px}h2{font-size:1.15rem;margin-top:28px}
p.sub{color:#4b5563;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 12px;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f3f4f6}
svg{background:#fff;border:1px solid #e5e7eb;max-width:100%;height:auto}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:12px;fill:#374151}
.note{color:#4b5563;font-size:.9rem}
"""


def write_html(result: BacktestResult, path: Path) -> None:
    """Write the report for `result` to `path` (one file, no external resources)."""
    Path(path).write_text(render_html(result), encoding="utf-8")


def render_html(result: BacktestResult) -> str:
    st = result.settings
    title = "prescaler backtest"
    window = f"{_ts(st['evaluated_from'])} – {_ts(st['evaluated_to'])} UTC"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(window)} · {st["evaluated_steps"]:,} steps of '
        f"{escape(format_duration(st['step']))} · startup delay {escape(format_duration(st['startup_delay']))}"
        f" · capacity {st['capacity']:,.0f} requests per replica per step · model {escape(result.forecast.label)}"
        "</p>",
        "<h2>Key figures</h2>",
        _kpi_table(result),
        _peers_note(result),
        _forecast_line(result),
        _sizing_line(result),
        _events_line(result),
        _models_table(result),
        "<h2>Load, forecast and ready capacity</h2>",
        '<p class="note">Ready capacity is ready replicas × capacity: what each policy could serve during the '
        "bucket. Load above a capacity line is unserved. Marks under the plot are the predictive policy's "
        "scale actions (▲ up, ▼ down); shaded spans are scheduled events.</p>",
        _time_chart(result, 0, len(result.ds), "Whole evaluated window"),
    ]
    lo, hi = _detail_window(result)
    if hi - lo < len(result.ds):
        parts += [
            "<h2>Around the highest load</h2>",
            '<p class="note">The same series at full resolution: capacity of the predictive policy is ready '
            "before the load arrives; the reactive policy follows one observation and one startup delay "
            "late. The peer autoscalers' ready capacity is drawn thin.</p>",
            _time_chart(result, lo, hi, "Detail", step_lines=True, peers=True),
        ]
    parts += [
        "<h2>Cost vs unserved load (headroom sweep)</h2>",
        '<p class="note">Each point is one headroom setting. Lower-left is better: fewer replica-hours and '
        "less unserved load.</p>",
        _frontier_chart(result),
        "<h3>At equal replica-hours</h3>",
        '<p class="note">At each predictive headroom, every other policy\'s unserved load at the same '
        "replica-hours, interpolated on its own headroom sweep (– where that cost is outside its sweep).</p>",
        _frontier_table(result),
        "<h2>Settings</h2>",
        _settings_table(result),
        "</body></html>",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Tables


def _kpi_table(result: BacktestResult) -> str:
    head = ("policy", "replica-hours", "saving vs static", "× oracle", "unserved requests",
            "under-provisioned steps", "scale actions")
    rows = []
    for name, k in result.kpis.items():
        ratio = "–" if k.ratio_to_oracle is None else f"{k.ratio_to_oracle:.2f}"
        rows.append((_label(name), f"{k.replica_hours:,.1f}", f"{k.saving_vs_static_pct:.1f}%", ratio,
                     f"{k.unserved_pct:.3f}%", f"{k.underprovisioned_pct:.2f}%", f"{k.scale_actions:,}"))
    return _table(head, rows, css_id="kpis")


_LABELS = {"ehpa": "Crane EffectiveHPA", "phpa": "PHPA"}


def _label(policy: str) -> str:
    return f"{_LABELS[policy]} ({policy})" if policy in _LABELS else policy


def _peers_note(result: BacktestResult) -> str:
    shown = [p for p in PEERS if p in result.kpis]
    if not shown:
        return ""
    items = "".join(f"<li><b>{escape(p)}</b>: {escape(TITLES[p])}</li>" for p in shown)
    return ('<p class="note">Peer autoscalers, from their published algorithms, on the same sizing, '
            f"startup delay and HPA scale-down stabilisation as reactive:</p><ul class=\"note\">{items}</ul>")


def _sizing_line(result: BacktestResult) -> str:
    """The service level's realized served % and calibrated coverage, and the reactive blend, as the table has."""
    lines = []
    if result.service_level is not None:
        lines.append(("service-level", service_level_line(result.service_level)))
    if result.blend is not None:
        lines.append(("blend", blend_line(result.blend)))
    return "".join(f'<p id="{css}">{escape(text[:1].upper() + text[1:])}.</p>'.replace("\n", "<br>")
                   for css, text in lines)


def _events_line(result: BacktestResult) -> str:
    st = result.settings
    windows = st.get("event_windows") or []
    if not st.get("events"):
        return ""
    lifts = st.get("event_lifts") or {}
    learned = ", ".join(f"{escape(str(k))} ×{float(v):.2f}" for k, v in lifts.items()) or "none learned yet"
    return (f"<p>Scheduled events: {int(st['events']):,} in the calendar, {len(windows):,} in the evaluated "
            f"window. Every forecast was fit with event windows masked and lifted in upcoming ones by the "
            f"mean lift of its kind learned from past windows (latest refit: {learned}).</p>")


def _forecast_line(result: BacktestResult) -> str:
    q = result.forecast

    def f(x: float | None, unit: str = "%", digits: int = 2) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}{unit}"

    return (f'<p>Forecast used by the predictive policy ({escape(q.label)}), against the actual load of the '
            f"evaluated window: sMAPE {f(q.smape)}, MAPE {f(q.mape)}, MASE {f(q.mase, '', 3)}.</p>")


def _models_table(result: BacktestResult) -> str:
    """Every model or mix the refits used, folded away: with `auto` there can be a dozen combinations."""
    models = result.forecast.models
    if len(models) < 2:
        return ""
    total = sum(models.values())
    rows = [(name, f"{n:,}", f"{100 * n / total:.0f}%") for name, n in models.items()]
    return (f"<details><summary>Models of the {total:,} refits ({len(models)} different)</summary>"
            + _table(("model (a mix lists its members by weight)", "refits", "share"), rows, css_id="models")
            + "</details>")


def _frontier_table(result: BacktestResult) -> str:
    """Predictive's frontier points, with every other policy's unserved load at the same replica-hours."""
    rows = equal_cost(result)
    if not rows:
        return ""
    names = list(rows[0].unserved_pct)
    out = []
    for r in rows:
        ratio = "–" if r.times_oracle is None else f"{r.times_oracle:.2f}"
        cells = ["–" if v is None else f"{v:.3f}%" for v in r.unserved_pct.values()]
        out.append((f"{r.headroom_pct:g}%", f"{r.replica_hours:,.0f}", ratio, *cells))
    head = ("predictive headroom", "replica-hours", "× oracle", *(f"{_label(n)} unserved" for n in names))
    return _table(head, out, css_id="equal-cost")


def _settings_table(result: BacktestResult) -> str:
    # The event windows are drawn on the charts; the peers are described under the KPI table.
    skip = {"event_windows", "peers"}
    rows = [(str(k).replace("_", " "), _setting(v)) for k, v in result.settings.items() if k not in skip]
    return _table(("setting", "value"), rows)


def _setting(v: Any) -> str:
    if isinstance(v, timedelta):
        return format_duration(v)
    if isinstance(v, pd.Timestamp):
        return _ts(v) + " UTC"
    if isinstance(v, float):
        return f"{v:,.6g}"
    if isinstance(v, list | tuple):
        return ", ".join(_setting(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_setting(x)}" for k, x in v.items()) or "–"
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], css_id: str | None = None) -> str:
    ident = f' id="{escape(css_id)}"' if css_id else ""
    out = [f"<table{ident}><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _ts(t: pd.Timestamp) -> str:
    return f"{pd.Timestamp(t):%Y-%m-%d %H:%M}"


# ---------------------------------------------------------------------------------------------------------
# Charts


@dataclass(frozen=True)
class _Frame:
    """Maps data to pixels inside the plot area."""

    x0: float
    x1: float
    y0: float
    y1: float
    top: float = MARGIN_T
    bottom: float = HEIGHT - MARGIN_B
    left: float = MARGIN_L
    right: float = WIDTH - MARGIN_R

    def x(self, v: np.ndarray | float) -> Any:
        return self.left + (np.asarray(v, dtype=float) - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    sqrt_y: bool = False  # a square-root scale spreads the small values a frontier converges to

    def y(self, v: np.ndarray | float) -> Any:
        a = np.asarray(v, dtype=float)
        lo, hi = self.y0, self.y1
        if self.sqrt_y:
            a, lo, hi = np.sqrt(np.maximum(a, 0.0)), math.sqrt(max(lo, 0.0)), math.sqrt(hi)
        return self.bottom - (a - lo) / (hi - lo) * (self.bottom - self.top)


def _bins(n: int, max_points: int) -> int:
    """Points per bin so that two points per bin stay within max_points."""
    return max(1, math.ceil(n / max(1, max_points // 2)))


def _envelope(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each bin of k points, in their original order; keeps peaks a plain stride would drop."""
    if k <= 1:
        return x, y
    n = len(y)
    pad = (-n) % k
    yy = np.concatenate([y, np.full(pad, np.nan)]).reshape(-1, k)
    xx = np.concatenate([x, np.full(pad, x[-1])]).reshape(-1, k)
    out_x: list[float] = []
    out_y: list[float] = []
    for row_x, row_y in zip(xx, yy, strict=True):
        if np.all(np.isnan(row_y)):
            out_x.append(float(row_x[0]))
            out_y.append(math.nan)  # keeps the gap visible
            continue
        i, j = int(np.nanargmin(row_y)), int(np.nanargmax(row_y))
        for m in sorted({i, j}):
            out_x.append(float(row_x[m]))
            out_y.append(float(row_y[m]))
    return np.array(out_x), np.array(out_y)


def _path(px: np.ndarray, py: np.ndarray, step_to: np.ndarray | None = None) -> str:
    """SVG path through the points, broken at NaN; with `step_to`, each value is held until the next x."""
    cmds: list[str] = []
    pen_up = True
    for i in range(len(px)):
        if not math.isfinite(py[i]):
            pen_up = True
            continue
        cmds.append(f"{'M' if pen_up else 'L'}{px[i]:.1f},{py[i]:.1f}")
        pen_up = False
        if step_to is not None:
            cmds.append(f"L{step_to[i]:.1f},{py[i]:.1f}")
    return " ".join(cmds)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _sqrt_ticks(hi: float) -> list[float]:
    """Ticks for a square-root axis: 0 and 1-2-5 steps, spaced at least ~1/12 of the axis apart."""
    candidates = [m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)]
    out = [0.0]
    for c in candidates:
        if c <= hi and math.sqrt(c) - math.sqrt(out[-1]) >= math.sqrt(hi) / 12:
            out.append(c)
    return out


def _fmt_num(v: float) -> str:
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


_TIME_STEPS = [timedelta(minutes=m) for m in (5, 15, 30)] + [timedelta(hours=h) for h in (1, 2, 3, 6, 12)] + [
    timedelta(days=d) for d in (1, 2, 7, 14, 28, 56)
]


def _time_ticks(start: pd.Timestamp, end: pd.Timestamp, max_ticks: int = 10) -> list[pd.Timestamp]:
    span = (end - start).total_seconds()
    interval = next((s for s in _TIME_STEPS if span / s.total_seconds() <= max_ticks), _TIME_STEPS[-1])
    origin = start.normalize()
    first = origin + math.ceil((start - origin).total_seconds() / interval.total_seconds()) * interval
    return list(pd.date_range(first, end, freq=interval))


def _time_label(t: pd.Timestamp, span: pd.Timedelta) -> str:
    if t.hour == 0 and t.minute == 0:
        return f"{t:%d %b}" if span > pd.Timedelta(days=3) else f"{t:%d %b} 00:00"
    return f"{t:%H:%M}"


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """items: (label, colour, kind) with kind line / dash / area."""
    out = []
    for label, colour, kind in items:
        if kind == "area":
            out.append(f'<rect x="{x:.0f}" y="{y - 9:.0f}" width="18" height="10" fill="{colour}" '
                       f'fill-opacity="0.45"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            out.append(f'<line x1="{x:.0f}" y1="{y - 4:.0f}" x2="{x + 18:.0f}" y2="{y - 4:.0f}" '
                       f'stroke="{colour}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{x + 23:.0f}" y="{y:.0f}">{escape(label)}</text>')
        x += 40 + 7.6 * len(label)
    return out


def _time_chart(result: BacktestResult, lo: int, hi: int, caption: str, step_lines: bool = False,
                peers: bool = False) -> str:
    ds = result.ds[lo:hi]
    if len(ds) == 0:
        return ""
    step = pd.Timedelta(result.settings["step"])
    x = ds.asi8.astype(float)
    x_end = float((ds[-1] + step).value)
    load = result.load[lo:hi]
    cap = result.capacity
    series = {
        "predictive": result.ready["predictive"][lo:hi] * cap,
        "reactive": result.ready["reactive"][lo:hi] * cap,
    }
    static = float(result.ready["static"][0]) * cap
    lower, upper, yhat = result.lower[lo:hi], result.upper[lo:hi], result.yhat[lo:hi]
    finite = [a[np.isfinite(a)] for a in (load, upper, yhat, *series.values())]
    ymax = max([static, *(float(a.max()) for a in finite if a.size)]) * 1.05 or 1.0
    shown_peers = [p for p in PEERS if peers and p in result.ready]
    # The peers' legend takes a second row above the plot.
    fr = _Frame(x[0], x_end, 0.0, ymax, top=MARGIN_T + (14 if shown_peers else 0))
    k = _bins(len(ds), MAX_POINTS)
    out = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-label="{escape(caption)}">']
    out += _axes(fr, result, ds[0], ds[-1] + step, "requests per step")
    out += _event_spans(result, fr, ds[0], ds[-1] + step)

    # Forecast band: per-bin min of lower and max of upper, drawn as one polygon per contiguous run.
    if np.isfinite(upper).any():
        bx = x if k == 1 else x[::k]
        lo_b = lower if k == 1 else _bin_reduce(lower, k, np.nanmin)
        up_b = upper if k == 1 else _bin_reduce(upper, k, np.nanmax)
        for a, b in _runs(np.isfinite(lo_b) & np.isfinite(up_b)):
            xs = np.concatenate([fr.x(bx[a:b]), fr.x(bx[a:b])[::-1]])
            ys = np.concatenate([fr.y(up_b[a:b]), fr.y(lo_b[a:b])[::-1]])
            pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in zip(xs, ys, strict=True))
            out.append(f'<polygon points="{pts}" fill="{COLOURS["band"]}" fill-opacity="0.45" stroke="none"/>')
    sy = fr.y(static)
    out.append(f'<line x1="{fr.left}" y1="{sy:.1f}" x2="{fr.right}" y2="{sy:.1f}" stroke="{COLOURS["static"]}" '
               'stroke-width="1.5" stroke-dasharray="2 4"/>')
    ex, ey = _envelope(x, yhat, k)
    out.append(f'<path d="{_path(fr.x(ex), fr.y(ey))}" fill="none" stroke="{COLOURS["yhat"]}" '
               'stroke-width="1.2" stroke-dasharray="5 3"/>')
    for name in shown_peers:
        ex, ey = _envelope(x, result.ready[name][lo:hi].astype(float) * cap, k)
        out.append(f'<path d="{_path(fr.x(ex), fr.y(ey))}" fill="none" stroke="{COLOURS[name]}" '
                   'stroke-width="1" stroke-opacity="0.8"/>')
    for name in ("reactive", "predictive"):
        if step_lines and k == 1:
            d = _path(fr.x(x), fr.y(series[name]), step_to=fr.x(np.append(x[1:], x_end)))
        else:
            ex, ey = _envelope(x, series[name].astype(float), k)
            d = _path(fr.x(ex), fr.y(ey))
        out.append(f'<path d="{d}" fill="none" stroke="{COLOURS[name]}" stroke-width="1.6"/>')
    ex, ey = _envelope(x, load, k)
    if step_lines and k == 1:
        d = _path(fr.x(x), fr.y(load), step_to=fr.x(np.append(x[1:], x_end)))
    else:
        d = _path(fr.x(ex), fr.y(ey))
    out.append(f'<path d="{d}" fill="none" stroke="{COLOURS["load"]}" stroke-width="1.4"/>')
    out += _action_marks(result, lo, hi, fr, x)
    out += _legend(
        [("load", COLOURS["load"], "line"), ("forecast band", COLOURS["band"], "area"),
         ("forecast", COLOURS["yhat"], "dash"), ("predictive ready capacity", COLOURS["predictive"], "line"),
         ("reactive ready capacity", COLOURS["reactive"], "line"),
         ("static fleet", COLOURS["static"], "dash")],
        MARGIN_L, 20,
    )
    out += _legend([(f"{_LABELS[p]} ready capacity", COLOURS[p], "line") for p in shown_peers], MARGIN_L, 36)
    out.append("</svg>")
    return "\n".join(out)


def _event_spans(result: BacktestResult, fr: _Frame, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    """A shaded band per scheduled event within the chart, titled with its name and kind."""
    out = []
    for ev in result.settings.get("event_windows") or []:
        a, b = max(pd.Timestamp(ev["start"]), start), min(pd.Timestamp(ev["end"]), end)
        if a >= b:
            continue
        xa, xb = float(fr.x(float(a.value))), float(fr.x(float(b.value)))
        out.append(f'<rect x="{xa:.1f}" y="{fr.top}" width="{max(1.0, xb - xa):.1f}" height="{fr.bottom - fr.top}" '
                   f'fill="{COLOURS["event"]}" fill-opacity="0.5"><title>{escape(str(ev["name"]))} '
                   f'({escape(str(ev["kind"]))}) {escape(_ts(a))} – {escape(_ts(b))} UTC</title></rect>')
    return out


def _action_marks(result: BacktestResult, lo: int, hi: int, fr: _Frame, x: np.ndarray) -> list[str]:
    acts = result.actions("predictive")[lo:hi]
    if not np.any(acts):
        return []
    # One mark per pixel column and direction, so months of hourly actions stay legible.
    px = np.floor(fr.x(x)).astype(int)
    out = []
    y_up, y_down = fr.bottom + 30, fr.bottom + 42
    for sign, y, colour, glyph in ((1, y_up, COLOURS["up"], "M0,-4 L4,3 L-4,3 Z"),
                                   (-1, y_down, COLOURS["down"], "M0,4 L4,-3 L-4,-3 Z")):
        cols = np.unique(px[np.sign(acts) == sign])
        for c in cols:
            out.append(f'<path transform="translate({c},{y})" d="{glyph}" fill="{colour}"/>')
    out.append(f'<text x="{fr.left - 6}" y="{y_up + 4}" text-anchor="end">up</text>')
    out.append(f'<text x="{fr.left - 6}" y="{y_down + 4}" text-anchor="end">down</text>')
    return out


def _bin_reduce(a: np.ndarray, k: int, fn: Any) -> np.ndarray:
    pad = (-len(a)) % k
    rows = np.concatenate([a, np.full(pad, np.nan)]).reshape(-1, k)
    out = np.full(len(rows), np.nan)
    ok = ~np.all(np.isnan(rows), axis=1)
    out[ok] = fn(rows[ok], axis=1)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def _axes(fr: _Frame, result: BacktestResult, start: pd.Timestamp, end: pd.Timestamp, ylabel: str) -> list[str]:
    out = [f'<rect x="{fr.left}" y="{fr.top}" width="{fr.right - fr.left}" height="{fr.bottom - fr.top}" '
           'fill="none" stroke="#d1d5db"/>']
    for v in _nice_ticks(fr.y0, fr.y1):
        py = fr.y(v)
        out.append(f'<line x1="{fr.left}" y1="{py:.1f}" x2="{fr.right}" y2="{py:.1f}" stroke="#f3f4f6"/>')
        out.append(f'<text x="{fr.left - 6}" y="{py + 4:.1f}" text-anchor="end">{escape(_fmt_num(v))}</text>')
    span = end - start
    for t in _time_ticks(start, end):
        px = fr.x(float(t.value))
        if px > fr.right - 24:  # a label there would be clipped by the edge
            continue
        out.append(f'<line x1="{px:.1f}" y1="{fr.top}" x2="{px:.1f}" y2="{fr.bottom}" stroke="#f3f4f6"/>')
        out.append(f'<line x1="{px:.1f}" y1="{fr.bottom}" x2="{px:.1f}" y2="{fr.bottom + 4}" stroke="#9ca3af"/>')
        out.append(f'<text x="{px:.1f}" y="{fr.bottom + 16}" text-anchor="middle">'
                   f"{escape(_time_label(t, span))}</text>")
    out.append(f'<text x="{(fr.left + fr.right) / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">'
               f"time (UTC), {escape(_ts(start))} – {escape(_ts(end))}</text>")
    out.append(f'<text transform="translate(14,{(fr.top + fr.bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    return out


def _detail_window(result: BacktestResult) -> tuple[int, int]:
    """Three days around the highest load (or the whole window when shorter)."""
    n = len(result.ds)
    step = pd.Timedelta(result.settings["step"])
    width = max(1, int(pd.Timedelta(days=3) / step))
    if n <= width or not np.isfinite(result.load).any():
        return 0, n
    peak = int(np.nanargmax(result.load))
    lo = min(max(0, peak - width * 2 // 3), n - width)
    return lo, lo + width


def _frontier_chart(result: BacktestResult) -> str:
    fronts = {k: v for k, v in result.frontier.items() if v}
    if not fronts:
        return ""
    oracle = result.kpis.get("oracle")
    xs = [p.replica_hours for v in fronts.values() for p in v]
    ys = [p.unserved_pct for v in fronts.values() for p in v]
    if oracle is not None:
        xs.append(oracle.replica_hours)
    x0, x1 = min(xs), max(xs)
    pad = (x1 - x0) * 0.06 or max(1.0, x1 * 0.05)
    fr = _Frame(x0 - pad, x1 + pad, 0.0, (max(ys) * 1.1) or 1.0, sqrt_y=True)
    out = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
           f'height="{HEIGHT}" role="img" aria-label="cost versus unserved load">',
           f'<rect x="{fr.left}" y="{fr.top}" width="{fr.right - fr.left}" height="{fr.bottom - fr.top}" '
           'fill="none" stroke="#d1d5db"/>']
    for v in _sqrt_ticks(fr.y1):
        py = fr.y(v)
        out.append(f'<line x1="{fr.left}" y1="{py:.1f}" x2="{fr.right}" y2="{py:.1f}" stroke="#f3f4f6"/>')
        out.append(f'<text x="{fr.left - 6}" y="{py + 4:.1f}" text-anchor="end">{v:g}%</text>')
    for v in _nice_ticks(fr.x0, fr.x1, 8):
        px = fr.x(v)
        out.append(f'<line x1="{px:.1f}" y1="{fr.top}" x2="{px:.1f}" y2="{fr.bottom}" stroke="#f3f4f6"/>')
        out.append(f'<text x="{px:.1f}" y="{fr.bottom + 16}" text-anchor="middle">{escape(_fmt_num(v))}</text>')
    out.append(f'<text x="{(fr.left + fr.right) / 2:.0f}" y="{HEIGHT - 24}" text-anchor="middle">'
               "replica-hours</text>")
    out.append(f'<text transform="translate(14,{(fr.top + fr.bottom) / 2:.0f}) rotate(-90)" '
               'text-anchor="middle">unserved requests, % (√ scale)</text>')
    for name, points in fronts.items():
        colour = COLOURS.get(name, "#000")
        px = fr.x(np.array([p.replica_hours for p in points]))
        py = fr.y(np.array([p.unserved_pct for p in points]))
        out.append(f'<path d="{_path(px, py)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p, cx, cy in zip(points, px, py, strict=True):
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}">'
                       f"<title>{escape(_label(name))} headroom {p.headroom_pct:g}%: {p.replica_hours:,.0f} replica-h, "
                       f"{p.unserved_pct:.3f}% unserved</title></circle>")
            out.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}" font-size="10">{p.headroom_pct:g}%</text>')
    legend = [(_LABELS.get(n, n), COLOURS.get(n, "#000"), "line") for n in fronts]
    if oracle is not None:
        ox, oy = fr.x(oracle.replica_hours), fr.y(0.0)
        out.append(f'<rect x="{ox - 4:.1f}" y="{oy - 4:.1f}" width="8" height="8" fill="{COLOURS["oracle"]}">'
                   f"<title>oracle: {oracle.replica_hours:,.0f} replica-h, 0% unserved</title></rect>")
        legend.append(("oracle (lower bound)", COLOURS["oracle"], "line"))
    out += _legend(legend, MARGIN_L, 20)
    out.append("</svg>")
    return "\n".join(out)
