"""The Prometheus feed: a query per service, evaluated over whole minutes, written as that minute's load.

A value Prometheus returns at time t (a whole minute) is the load of the minute that ends at t, so it goes to
the bucket starting at t - 1m. A series seen for the first time is backfilled over `backfill` (or as far as
Prometheus holds: older ranges return nothing), in chunks of at most `chunk` minutes, each chunk written with
the series' watermark in one transaction: an interrupted backfill resumes where it stopped, and a later cycle
writes only the minutes completed since.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlalchemy.engine import Engine

from prescaler.collect.config import MINUTE, FeedSpec, PrometheusSpec
from prescaler.collect.feed import CollectError, FeedReport, SeriesProgress, StopSignal
from prescaler.collect.store import MinuteWriter, Watermark, load_watermarks
from prescaler.errors import InputError
from prescaler.history import TrafficSource

log = logging.getLogger(__name__)

ENDPOINT = "*"  # a Prometheus series is a service's whole load
STEP = 60
_INT64_MAX = 2**63 - 1
_SHOWN_SERIES = 3


def _labels(metric: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


class PrometheusClient:
    """The HTTP API's range query, with the feed's credentials and CA, and errors mapped to kinds."""

    def __init__(self, spec: PrometheusSpec, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.session = session or requests.Session()

    def _credentials(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        # Read per request: a mounted Secret (or a projected service-account token) rotates under us.
        try:
            if self.spec.bearer_token is not None:
                return {"Authorization": f"Bearer {self.spec.bearer_token.read()}"}, None
            if self.spec.username is not None and self.spec.password is not None:
                return {}, (self.spec.username, self.spec.password.read())
        except InputError as exc:
            raise CollectError("auth", f"cannot read the Prometheus credentials: {exc}", transient=True) from exc
        return {}, None

    def query_range(self, query: str, start: int, end: int) -> list[dict[str, Any]]:
        """Series of `query` evaluated at every whole minute from `start` to `end` (epoch seconds, inclusive)."""
        headers, auth = self._credentials()
        timeout = self.spec.timeout.total_seconds()
        url = f"{self.spec.url}/api/v1/query_range"
        # POST: a long query (or a long service name) never meets a URL length limit.
        form = {"query": query, "start": str(start), "end": str(end), "step": str(STEP), "timeout": f"{timeout:g}s"}
        try:
            resp = self.session.post(url, data=form, headers=headers, auth=auth, timeout=timeout + 5,
                                     verify=str(self.spec.ca_file) if self.spec.ca_file else True)
        except requests.exceptions.SSLError as exc:
            raise CollectError("tls", f"TLS handshake with {self.spec.url} failed: {_short(exc)}",
                               transient=True) from exc
        except requests.Timeout as exc:
            raise CollectError("timeout", f"Prometheus at {self.spec.url} did not answer within {timeout:g}s",
                               transient=True) from exc
        except requests.RequestException as exc:
            raise CollectError("unreachable", f"Prometheus at {self.spec.url} is unreachable: {_short(exc)}",
                               transient=True) from exc
        if resp.status_code in (401, 403):
            raise CollectError("auth", f"Prometheus at {self.spec.url} refused the credentials "
                                       f"(HTTP {resp.status_code})", transient=True)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise CollectError("bad_response", f"{url} answered HTTP {resp.status_code} without a Prometheus API "
                                               f"response: {resp.text[:200]!r}", transient=True)
        if body["status"] != "success":
            kind = str(body.get("errorType") or "")
            message = f"Prometheus: {kind}: {body.get('error')}"
            if kind in ("bad_data", "execution"):
                raise CollectError("query", message, transient=False)
            raise CollectError("timeout" if kind in ("timeout", "canceled") else "bad_response", message,
                               transient=True)
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise CollectError("query", f"the query gives a {data.get('resultType')}, not an instant vector "
                                        "(wrap a scalar in vector())", transient=False)
        return list(data.get("result") or [])


def _short(exc: BaseException) -> str:
    """requests nests urllib3's reason several levels deep; the innermost line is the useful one."""
    while exc.__context__ is not None and exc.__context__ is not exc and str(exc.__context__):
        exc = exc.__context__
    return " ".join(str(exc).split())[:300]


def minutes_of(result: list[dict[str, Any]], first: int, last: int) -> tuple[list[int], list[int], Counter[str]]:
    """Bucket starts and whole requests from one series' samples at minutes first..last; skips by reason."""
    if len(result) > 1:
        shown = ", ".join(_labels(s.get("metric") or {}) for s in result[:_SHOWN_SERIES])
        more = f" and {len(result) - _SHOWN_SERIES} more" if len(result) > _SHOWN_SERIES else ""
        raise CollectError("multiple_series", f"the query returns {len(result)} series ({shown}{more}); it must "
                                              "return one, e.g. sum(...) over them", transient=False)
    starts: list[int] = []
    values: list[int] = []
    skipped: Counter[str] = Counter()
    for t_raw, v_raw in (result[0].get("values") or []) if result else []:
        t = round(float(t_raw))
        if t % STEP or not first <= t <= last:
            continue  # not one of the requested evaluation times
        v = float(v_raw)
        if math.isnan(v):
            skipped["nan"] += 1
        elif math.isinf(v):
            skipped["infinite"] += 1
        elif v < 0:
            skipped["negative"] += 1
        elif v + 0.5 > _INT64_MAX:
            skipped["too_large"] += 1
        else:
            starts.append(t - STEP)
            values.append(math.floor(v + 0.5))  # half up: 2.5 requests per minute count as 3
    return starts, values, skipped


class PrometheusFeed:
    needs_leader = True  # two writers would query Prometheus twice and race on the watermarks

    def __init__(self, spec: FeedSpec, source: TrafficSource, engine: Engine, *,
                 concurrency: int = 4, session: requests.Session | None = None) -> None:
        assert spec.prometheus is not None
        self.spec = spec
        self.settings = spec.prometheus
        self.engine = engine
        self.writer = MinuteWriter(engine, source)
        self.client = PrometheusClient(self.settings, session)
        self.concurrency = max(1, concurrency)
        self._queries = {s: self.settings.query.render(s) for s in self.settings.services}

    def close(self) -> None:
        self.client.session.close()

    def collect(self, newest: datetime, stop: StopSignal) -> FeedReport:
        report = FeedReport(feed=self.spec.name, newest=newest)
        try:
            marks = load_watermarks(self.engine, self.spec.name, self.spec.source)
        except CollectError as exc:
            report.errors.append(("", exc))
            report.progress = [SeriesProgress(s, None, None) for s in self.settings.services]
            return report
        if self.concurrency == 1 or len(self.settings.services) == 1:
            parts = [self.collect_series(s, marks.get(s), newest, stop) for s in self.settings.services]
        else:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"feed-{self.spec.name}") as pool:
                parts = list(pool.map(lambda s: self.collect_series(s, marks.get(s), newest, stop),
                                      self.settings.services))
        for part in parts:
            report.merge(part)
        return report

    def collect_series(self, service: str, mark: Watermark | None, newest: datetime,
                       stop: StopSignal) -> FeedReport:
        """Every minute of one service up to `newest` after its watermark, chunk by chunk."""
        report = FeedReport(feed=self.spec.name, newest=newest)
        stored = mark is not None
        if mark is None:  # first sight: the backfill window is fixed now and kept in the watermark
            mark = Watermark(newest - self.settings.backfill, newest - self.settings.backfill)
        backfill_from, done = mark.backfill_from, mark.collected_until
        chunk = self.settings.chunk
        try:
            while done < newest and not stop.is_set():
                until = min(done + chunk, newest)
                first, last = int((done + MINUTE).timestamp()), int(until.timestamp())
                result = self.client.query_range(self._queries[service], first, last)
                if stop.is_set():  # a query can outlast the lease: check again right before writing
                    break
                starts, values, skipped = minutes_of(result, first, last)
                report.rows_written += self.writer.write(
                    feed=self.spec.name, source_name=self.spec.source, service=service, endpoint=ENDPOINT,
                    starts=starts, values=values, backfill_from=backfill_from, collected_until=until)
                report.minutes += (last - first) // STEP + 1
                report.skipped.update(skipped)
                done = until
                stored = True
        except CollectError as exc:
            report.errors.append((service, exc))
        report.progress.append(SeriesProgress(service, backfill_from if stored else None,
                                              done if stored else None))
        return report


def floor_minute(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t - timedelta(seconds=t.second, microseconds=t.microsecond)
