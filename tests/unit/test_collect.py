"""`prescaler collect` without a server: PromQL templates, configuration errors, the collector's metrics, and
leader election on a fake Lease API."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from prescaler.collect import load_config, metrics
from prescaler.collect.config import FeedSpec
from prescaler.collect.feed import FeedReport
from prescaler.collect.leader import ElectionSettings, LeaseElector
from prescaler.collect.prometheus import floor_minute, minutes_of
from prescaler.collect.promql import QueryTemplate
from prescaler.collect.runner import LeaderStop, run_cycle
from prescaler.errors import InputError

UTC = dt.UTC
QUERY = 'sum(nasa_requests_per_minute{service="$service"})'


def _write_config(path: Path, url: str, *, feed: dict[str, Any] | None = None, sources: dict[str, Any] | None = None,
                  **prometheus: Any) -> Path:
    settings = {"url": url, "query": QUERY, "services": ["nasa"], "backfill": "15d", **prometheus}
    doc = {"sources": sources or {"default": {}},
           "feeds": [{"name": "nasa", "source": "default", "prometheus": settings, **(feed or {})}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prescaler.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_minutes_of_keeps_only_requested_whole_minutes() -> None:
    result = [{"metric": {}, "values": [[600, "1"], [630, "2"], [660, "2.5"], [720, "1e3"], [9999960, "4"]]}]
    starts, values, skipped = minutes_of(result, 600, 720)
    assert starts == [540, 600, 660] and values == [1, 3, 1000] and not skipped
    assert minutes_of([], 600, 720) == ([], [], {})


@pytest.mark.parametrize(("template", "message"), [
    ('sum(x{service=~"$service"})', "regular-expression matcher"),
    ("sum(x{service='$service'})", "single-quoted"),
    ('sum(x{service=$service})', "inside a double-quoted label value"),
    ('label_replace(x{a="b"}, "service", "$service", "", "")', "not a label value"),
    ('sum(x{service="$service"}) # $service', "comment"),
    ('sum(x{service="nasa"})', "must contain $service"),
    ('sum(x{service=`$service`})', "raw"),
])
def test_templates_with_service_outside_a_label_value_are_rejected(template: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("$", r"\$")):
        QueryTemplate(template)


def test_instant_selectors_are_held_to_their_minute_and_range_selectors_left_alone() -> None:
    def r(t: str) -> str:
        return QueryTemplate(t).render("s")

    assert r('sum(x{a="$service"})') == 'sum(last_over_time(x{a="s"}[59s999ms]))'
    assert r('sum(rate(x{a="$service"}[1m])) * 60') == 'sum(rate(x{a="s"}[1m])) * 60'
    assert r('sum by (le) (x{a="$service"} offset 5m)') == \
        'sum by (le) (last_over_time(x{a="s"}[59s999ms] offset 5m))'
    assert r('x{a="$service"} / on(job) group_left y') == \
        'last_over_time(x{a="s"}[59s999ms]) / on(job) group_left last_over_time(y[59s999ms])'
    assert r('max_over_time(x{a="$service"}[10m:1m])') == \
        'max_over_time(last_over_time(x{a="s"}[59s999ms])[10m:1m])'
    assert r('x{a="$service"} @ end() and bool 1') == 'last_over_time(x{a="s"}[59s999ms] @ end()) and bool 1'


@pytest.mark.parametrize(("change", "message"), [
    ({"feed": {"source": "nope"}}, r"feed 'nasa'\.source: unknown source 'nope'"),
    ({"backfill": "15x"}, r"feed 'nasa': prometheus\.backfill: '15x' is not a duration"),
    ({"backfill": "90s"}, r"prometheus\.backfill: '90s' must be a whole number of minutes"),
    ({"chunk": "8d"}, r"prometheus\.chunk: at most 10999 minutes"),
    ({"url": "ftp://prometheus:9090"}, r"prometheus\.url: 'ftp://prometheus:9090' is not an http"),
    ({"url": "http://user:pw@prometheus:9090"}, r"prometheus\.url: must not carry credentials"),
    ({"url": "http://prometheus:99999"}, r"prometheus\.url: .* is not a URL"),
    ({"services": []}, r"prometheus\.services: expected a non-empty list"),
    ({"services": ["a", "a"]}, r"services\[1\]: 'a' is listed twice"),
    ({"services": [""]}, r"services\[0\]: must not be empty"),
    ({"services": [42]}, r"services\[0\]: expected a string"),
    ({"query": 'sum(x{service=~"$service"})'}, r"prometheus\.query: \$service is in a regular-expression"),
    ({"bearer_token_file": "/nonexistent/token"}, r"prometheus\.bearer_token_file: .* is not a readable file"),
    ({"bearer_token_env": "PRESCALER_TEST_UNSET_TOKEN"}, r"environment variable PRESCALER_TEST_UNSET_TOKEN"),
    ({"basic_auth": {"username": "u"}}, r"basic_auth\.password_file: basic_auth needs password_file"),
    ({"queyr": "x"}, r"unknown keys \['queyr'\]"),
])
def test_config_errors_exit_2_naming_feed_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    feed = change.pop("feed", None)
    url = change.pop("url", "http://127.0.0.1:9090")
    config = _write_config(tmp_path / "c.yaml", url, feed=feed, **change)
    with pytest.raises(InputError, match=message):
        load_config(config)
    done = _cli("collect", "--config", str(config), "--once", "--database-url", "postgresql+psycopg2://x@127.0.0.1:9/x")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(config) in done.stderr


def test_config_file_shape_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources: {}\nfeds: []\n")
    with pytest.raises(InputError, match=r"unknown top-level keys \['feds'\]"):
        load_config(path)
    path.write_text("sources: {}\n")
    with pytest.raises(InputError, match="no feeds"):
        load_config(path)
    path.write_text("feeds:\n  - name: a\n    prometheus: {url: 'http://p', query: 'x{s=\"$service\"}', "
                    "services: [a]}\n  - name: a\n    prometheus: {}\n")
    with pytest.raises(InputError, match="'a' is used by another feed"):
        load_config(path)
    path.write_text("feeds:\n  - name: a\n")
    with pytest.raises(InputError, match=r"needs exactly one of \['kafka', 'prometheus'\]"):
        load_config(path)


def test_collector_metric_names_are_the_registry() -> None:
    names = {m.name for m in metrics.REGISTRY.collect()}
    assert names == set(metrics.METRIC_NAMES)
    assert all(n.startswith("prescaler_collector_") for n in names)


def test_the_operator_runtime_does_not_import_the_collector() -> None:
    code = ("import sys, prescaler.handlers, prescaler.cli; "
            "print([m for m in sys.modules if m.startswith('prescaler.collect')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- leader election (the Lease protocol on a fake API and a fake clock; the real one is in e2e) -----------

class FakeLeases:
    """The three Lease calls of CoordinationV1Api, with resourceVersion conflicts; `down` fails every call."""

    def __init__(self) -> None:
        self.lease: Any = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        self._check()
        if body.metadata.resource_version != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def _store(self, body: Any) -> Any:
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body


def _electors(api: FakeLeases, now: list[float]) -> tuple[LeaseElector, LeaseElector]:
    settings = ElectionSettings(namespace="ns", lease_duration=dt.timedelta(seconds=15),
                                renew_deadline=dt.timedelta(seconds=10), retry_period=dt.timedelta(seconds=2))
    def clock() -> float:
        return now[0]

    return (LeaseElector(api, dataclasses.replace(settings, identity="a"), monotonic=clock),
            LeaseElector(api, dataclasses.replace(settings, identity="b"), monotonic=clock))


def test_a_silent_leader_stops_leading_before_a_standby_may_take_over() -> None:
    api, now = FakeLeases(), [100.0]
    a, b = _electors(api, now)
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    for _ in range(5):  # renewals keep the standby out however long it waits
        now[0] += 2
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    last_renew = now[0]
    api.down = True  # a's renewals fail from now on (the API server is unreachable for it)
    timeline = []
    while now[0] < last_renew + 20:
        now[0] += 0.5
        a.try_acquire_or_renew()
        if now[0] >= last_renew + 14:
            api.down = False  # b, elsewhere, reaches the API server
            b.try_acquire_or_renew()
            api.down = True
        timeline.append((now[0], a.is_leader(), b.is_leader()))
    a_stopped = min(t for t, a_leads, _ in timeline if not a_leads)
    b_started = min(t for t, _, b_leads in timeline if b_leads)
    assert a_stopped == last_renew + 10  # the renew deadline
    assert b_started >= last_renew + 15  # not before the lease could have expired
    assert not any(x and y for _, x, y in timeline)  # never two leaders
    api.down = False
    assert not a.try_acquire_or_renew() and not a.is_leader()  # a learns it lost, and stays out
    assert api.lease.spec.holder_identity == "b" and api.lease.spec.lease_transitions == 1


def test_a_released_lease_is_taken_at_once_and_microtime_keeps_six_digits() -> None:
    api, now = FakeLeases(), [0.0]
    a, b = _electors(api, now)
    assert a.try_acquire_or_renew()
    a.release()
    assert not a.is_leader() and api.lease.spec.holder_identity == ""
    now[0] += 0.1
    assert b.try_acquire_or_renew() and b.is_leader()
    assert api.lease.spec.renew_time.microsecond != 0  # isoformat() would drop a zero fraction


def test_leader_only_feeds_are_skipped_and_stopped_when_the_lease_is_lost() -> None:
    class Gate:
        leader = False

        def is_leader(self) -> bool:
            return self.leader

    class Recording:
        def __init__(self, name: str, needs_leader: bool) -> None:
            self.spec = FeedSpec(name=name, source="default", kind="prometheus")
            self.needs_leader = needs_leader
            self.stopped_at_start: bool | None = None

        def collect(self, newest: dt.datetime, stop: Any) -> FeedReport:
            self.stopped_at_start = stop.is_set()
            return FeedReport(feed=self.spec.name, newest=newest)

        def close(self) -> None:
            pass

    gate = Gate()
    prom, kafka = Recording("p", True), Recording("k", False)
    reports = run_cycle([prom, kafka], floor_minute(dt.datetime.now(UTC)), threading.Event(), gate)
    assert [r.feed for r in reports] == ["k"] and prom.stopped_at_start is None
    gate.leader = True
    reports = run_cycle([prom, kafka], floor_minute(dt.datetime.now(UTC)), threading.Event(), gate)
    assert [r.feed for r in reports] == ["p", "k"] and prom.stopped_at_start is False
    stop = LeaderStop(threading.Event(), gate)
    gate.leader = False
    assert stop.is_set()  # what a Prometheus feed checks before each write
