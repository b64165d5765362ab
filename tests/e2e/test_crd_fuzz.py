"""A fuzz corpus of PredictiveScalers against the real API server and the running operator.

Hypothesis builds valid specs and breaks them: wrong types, missing required fields, numbers out of range, bad
durations, minReplicas > maxReplicas, unknown enum values, huge strings, unicode, unknown fields, bad names,
and specs the schema accepts but the operator must refuse (durations that contradict each other, an unknown
source). Every object is sent to the API server with strict field validation, as kubectl does. Each must be
either rejected with a message naming a field it broke, or accepted and then reported by the operator as a
Ready condition for its generation (False with a reason, or True) — while the one operator process stays
alive and healthy. The corpus is derandomized and generated once; the API calls go out in parallel batches.
Prints one `FUZZ FIGURES` line (docs/faults.md quotes it).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from prescaler.clock import Clock
from prescaler_dev.localcluster import LocalCluster
from waiting import wait_for

from .operator_support import OperatorProcess, install_crds, peak_day_time

GROUP, VERSION, PLURAL = "prescaler.dev", "v1alpha1", "predictivescalers"
NS = "e2e-fuzz"
EXAMPLES = 600  # at least 500 distinct objects after duplicates are dropped

Json = Any
Path_ = tuple[str, ...]

DURATIONS: tuple[Path_, ...] = (
    ("spec", "capacity", "per"), ("spec", "forecast", "history"), ("spec", "forecast", "horizon"),
    ("spec", "forecast", "step"), ("spec", "forecast", "refreshInterval"), ("spec", "scaling", "interval"),
    ("spec", "scaling", "leadTime"), ("spec", "scaling", "scaleDown", "stabilizationWindow"),
    ("spec", "fallback", "staleAfter"),
)
ENUMS: dict[Path_, tuple[str, ...]] = {
    ("spec", "mode"): ("Auto", "ForecastOnly", "Paused"),
    ("spec", "actuation"): ("Replicas", "HPAMinReplicas"),
    ("spec", "forecast", "model"): ("auto", "prophet", "seasonal-naive", "holt-winters"),
    ("spec", "forecast", "quantile"): ("yhat", "upper"),
    ("spec", "fallback", "action"): ("HoldCurrent", "ScaleToMax"),
    ("spec", "scaleTargetRef", "kind"): ("Deployment", "StatefulSet"),
}
INTEGERS: dict[Path_, tuple[int, int | None]] = {  # the schema's bounds
    ("spec", "minReplicas"): (1, None),
    ("spec", "maxReplicas"): (1, 10000),
    ("spec", "capacity", "requestsPerReplica"): (1, None),
    ("spec", "scaling", "headroomPercent"): (0, 1000),
    ("spec", "scaling", "scaleDown", "maxStepPercent"): (1, 100),
}
STRINGS: tuple[Path_, ...] = (
    ("spec", "scaleTargetRef", "name"), ("spec", "scaleTargetRef", "apiVersion"), ("spec", "series", "source"),
    ("spec", "series", "service"), *DURATIONS, *ENUMS,
)
SECTIONS: tuple[Path_, ...] = (
    ("spec",), ("spec", "scaleTargetRef"), ("spec", "series"), ("spec", "capacity"), ("spec", "forecast"),
    ("spec", "scaling"), ("spec", "scaling", "scaleDown"), ("spec", "fallback"),
)
LEAVES: tuple[Path_, ...] = (*STRINGS, *INTEGERS, ("spec", "scaling", "reactiveFloor"))
REQUIRED: tuple[Path_, ...] = (
    ("spec",), ("spec", "scaleTargetRef"), ("spec", "maxReplicas"), ("spec", "series"), ("spec", "capacity"),
    ("spec", "scaleTargetRef", "kind"), ("spec", "scaleTargetRef", "name"), ("spec", "series", "service"),
    ("spec", "capacity", "requestsPerReplica"),
)
BAD_DURATIONS = ("", " ", "5", "5x", "1.5h", "-5m", "m5", "5M", "5mm", "1h 30m", "１m", "5m\n", "0s", "0m0s",
                 "9" * 31 + "d", "99999999999w", "1" * 40 + "s", "P1D", "1d-1h")
READY_REASONS = {"Ready", "Paused"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda s: not s.isascii())
huge_text = st.tuples(st.characters(exclude_categories=["Cs"]), st.integers(254, 20_000)).map(
    lambda t: t[0] * t[1])
field_names = st.text(string.ascii_letters, min_size=1, max_size=12)


_any_path = st.sampled_from((*LEAVES, *SECTIONS))
_required_path = st.sampled_from(REQUIRED)
_integer_path = st.sampled_from(sorted(INTEGERS))
_duration_path = st.sampled_from(DURATIONS)
_bad_duration = st.sampled_from(BAD_DURATIONS) | st.text(max_size=40)
_enum_path = st.sampled_from(sorted(ENUMS))
_string_path = st.sampled_from(STRINGS)
_section_path = st.sampled_from(SECTIONS)
_bad_names = (st.sampled_from(("", "UPPER", "under_score", "-lead", "trail-", "dot..dot")) | unicode_text
              | st.integers(254, 2000).map(lambda n: "a" * n))


def dotted(path: Path_) -> str:
    return ".".join(path)


def get(obj: Json, path: Path_) -> Json:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def parent_of(obj: Json, path: Path_) -> dict[str, Json] | None:
    """The dict holding `path`'s last key, created on the way when missing; None when a step is not an object."""
    for key in path[:-1]:
        if not isinstance(obj, dict):
            return None
        obj = obj.setdefault(key, {})
    return obj if isinstance(obj, dict) else None


OPTIONAL: tuple[Path_, ...] = tuple(p for p in LEAVES if p not in REQUIRED and p[:2] != ("spec", "scaleTargetRef"))
# Strategies are built once: building them per draw costs more than drawing from them.
_bounds = st.tuples(st.integers(1, 5), st.integers(0, 45)).map(lambda t: (t[0], t[0] + t[1]))
_spec_draws = st.fixed_dictionaries({
    "bounds": _bounds,
    "mode": st.sampled_from(ENUMS[("spec", "mode")]),
    "actuation": st.sampled_from(("Replicas", "Replicas", "HPAMinReplicas")),
    "service": st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12).map(lambda t: "fz-" + t),
    "requests": st.integers(1, 10**6),
    "per": st.sampled_from(("1s", "1m", "1h")),
    "model": st.sampled_from(ENUMS[("spec", "forecast", "model")]),
    "quantile": st.sampled_from(("yhat", "upper")),
    "interval": st.sampled_from(("30s", "1m", "2m")),
    "headroom": st.integers(0, 1000),
    "floor": st.booleans(),
    "step": st.integers(1, 100),
    "action": st.sampled_from(("HoldCurrent", "ScaleToMax")),
    "omit": st.lists(st.sampled_from(OPTIONAL), max_size=4),
})


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Json]:
    d: dict[str, Any] = draw(_spec_draws)
    lo, hi = d["bounds"]
    spec: dict[str, Json] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "TARGET"},
        "minReplicas": lo,
        "maxReplicas": hi,
        "mode": d["mode"],
        "actuation": d["actuation"],
        "series": {"source": "default", "service": d["service"]},
        "capacity": {"requestsPerReplica": d["requests"], "per": d["per"]},
        "forecast": {"model": d["model"], "history": "14d", "horizon": "1d", "step": "5m", "refreshInterval": "1h",
                     "quantile": d["quantile"]},
        "scaling": {"interval": d["interval"], "leadTime": "5m", "headroomPercent": d["headroom"],
                    "reactiveFloor": d["floor"],
                    "scaleDown": {"stabilizationWindow": "15m", "maxStepPercent": d["step"]}},
        "fallback": {"staleAfter": "2h", "action": d["action"]},
    }
    # Optional fields left out take the schema's defaults.
    for path in d["omit"]:
        holder = parent_of({"spec": spec}, path)
        if holder is not None:
            holder.pop(path[-1], None)
    return spec


# Each mutation changes the object and returns the field paths it broke (empty when it could not apply).
Mutation = Callable[[st.DrawFn, dict[str, Json]], list[str]]


def _set(obj: dict[str, Json], path: Path_, value: Json) -> list[str]:
    holder = parent_of(obj, path)
    if holder is None:
        return []
    holder[path[-1]] = value
    return [dotted(path)]


def wrong_type(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    path = draw(_any_path)
    current = get(obj, path)
    value = draw(json_values.filter(lambda v: type(v) is not type(current)))
    return _set(obj, path, value)


def missing_required(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    path = draw(_required_path)
    holder = parent_of(obj, path)
    if holder is None or path[-1] not in holder:
        return []
    del holder[path[-1]]
    return [dotted(path)]


def out_of_range(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    path = draw(_integer_path)
    lo, hi = INTEGERS[path]
    outside = st.integers(max_value=lo - 1) | st.sampled_from((-(2**63), -(2**31) - 1, lo - 1))
    if hi is not None:
        outside |= st.integers(min_value=hi + 1) | st.sampled_from((2**31, 2**63 - 1, 2**64, hi + 1))
    return _set(obj, path, draw(outside))


def bad_duration(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    return _set(obj, draw(_duration_path), draw(_bad_duration))


def min_above_max(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    high = draw(st.integers(1, 10000))
    spec["maxReplicas"] = high
    spec["minReplicas"] = high + draw(st.integers(1, 10**6))
    return ["spec.minReplicas", "spec.maxReplicas"]


def unknown_enum(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    path = draw(_enum_path)
    allowed = ENUMS[path]
    near = [variant for v in allowed for variant in (v.upper(), v.lower(), v + " ", v[:-1], v.capitalize())]
    return _set(obj, path, draw((st.sampled_from(near) | st.text(max_size=30)).filter(lambda v: v not in allowed)))


def huge_string(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    return _set(obj, draw(_string_path), draw(huge_text))


def unicode_string(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    return _set(obj, draw(_string_path), draw(unicode_text))


def unknown_field(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    section = draw(_section_path)
    holder = get(obj, section)
    if not isinstance(holder, dict):
        return []
    name = draw(field_names.filter(lambda n: n not in holder))
    holder[name] = draw(json_values)
    return [dotted((*section, name))]


def bad_name(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    name = draw(_bad_names)
    obj["metadata"]["name"] = name
    return ["metadata.name"]


# Valid for the schema, contradictory or unservable for the operator: it must say so in a condition.
REFUSED: tuple[tuple[Path_, str], ...] = (
    (("spec", "forecast", "history"), "12h"),  # less than a day
    (("spec", "forecast", "horizon"), "1m"),  # shorter than leadTime + interval
    (("spec", "forecast", "step"), "2d"),  # longer than the horizon
    (("spec", "fallback", "staleAfter"), "1m"),  # stale before the next refit
    (("spec", "series", "source"), "not-configured"),
    (("spec", "scaleTargetRef", "kind"), "StatefulSet"),  # no such target
)


def operator_refuses(draw: st.DrawFn, obj: dict[str, Json]) -> list[str]:
    _set(obj, *draw(st.sampled_from(REFUSED)))
    return []  # the API server must accept it


MUTATIONS: tuple[Mutation, ...] = (wrong_type, missing_required, out_of_range, bad_duration, min_above_max,
                                   unknown_enum, huge_string, unicode_string, unknown_field, bad_name,
                                   operator_refuses)


@dataclass
class Case:
    index: int
    body: dict[str, Json]
    broken: list[str]  # field paths the mutations broke
    mutations: list[str]
    status: int = 0
    message: str = ""

    @property
    def name(self) -> str:
        return f"fz-{self.index:04d}"


@st.composite
def scaler_objects(draw: st.DrawFn) -> tuple[dict[str, Json], list[str], list[str]]:
    obj: dict[str, Json] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PredictiveScaler",
                            "metadata": {"name": "NAME", "namespace": NS}, "spec": draw(valid_spec())}
    broken: list[str] = []
    applied: list[str] = []
    # About one object in seven stays valid; the others take one to three mutations.
    count = draw(st.sampled_from((1, 2, 1, 3, 1, 2, 0)))  # hypothesis favours the first
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=count, max_size=count)):
        broken += mutation(draw, obj)
        applied.append(mutation.__name__)
    return obj, broken, applied


def _base() -> dict[str, Json]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PredictiveScaler",
            "metadata": {"name": "NAME", "namespace": NS},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "TARGET"}, "minReplicas": 1, "maxReplicas": 4,
                     "mode": "ForecastOnly", "series": {"service": "peak-api"}, "capacity": {"requestsPerReplica": 100},
                     "forecast": {"model": "seasonal-naive", "history": "14d", "horizon": "1d", "step": "5m",
                                  "refreshInterval": "1h"},
                     "scaling": {"interval": "1m", "leadTime": "5m", "scaleDown": {"stabilizationWindow": "15m"}},
                     "fallback": {"staleAfter": "2h"}}}


def edge_cases() -> list[tuple[dict[str, Json], list[str], list[str]]]:
    """Every catalogued bad value once, on an otherwise valid object: random draws may miss a rare one."""
    out: list[tuple[dict[str, Json], list[str], list[str]]] = []

    def add(label: str, obj: dict[str, Json], broken: list[str]) -> None:
        out.append((obj, broken, [f"edge:{label}"]))

    # The base itself, reporting only and acting: both must end Ready=True (its series has traffic).
    add("valid", _base(), [])
    obj = _base()
    obj["spec"]["mode"] = "Auto"
    add("valid", obj, [])

    for i, text in enumerate(BAD_DURATIONS):
        obj = _base()
        add("bad_duration", obj, _set(obj, DURATIONS[i % len(DURATIONS)], text))
    for path, (lo, hi) in INTEGERS.items():
        for number in (lo - 1, -(2**63), 2**64, *(() if hi is None else (hi + 1,))):
            obj = _base()
            add("out_of_range", obj, _set(obj, path, number))
    for path, allowed in ENUMS.items():
        obj = _base()
        add("unknown_enum", obj, _set(obj, path, allowed[0].upper() + "X"))
    for path in REQUIRED:
        obj = _base()
        holder = parent_of(obj, path)
        assert holder is not None
        del holder[path[-1]]
        add("missing_required", obj, [dotted(path)])
    for path in SECTIONS:
        obj = _base()
        add("wrong_type", obj, _set(obj, path, "not-an-object"))
        obj = _base()
        add("unknown_field", obj, _set(obj, (*path, "fuzzExtra"), {"x": 1}))
    for path in STRINGS:
        obj = _base()
        add("huge_string", obj, _set(obj, path, "x" * 5000))
        obj = _base()
        add("unicode_string", obj, _set(obj, path, "wörkout-ä"))
    for name in ("", "UPPER", "a" * 254, "ünïcode"):
        obj = _base()
        obj["metadata"]["name"] = name
        add("bad_name", obj, ["metadata.name"])
    obj = _base()
    obj["spec"].update(minReplicas=5, maxReplicas=4)
    add("min_above_max", obj, ["spec.minReplicas", "spec.maxReplicas"])
    for path, text in REFUSED:
        obj = _base()
        _set(obj, path, text)
        add("operator_refuses", obj, [])
    return out


def generate_corpus() -> tuple[list[Case], int]:
    """The hypothesis corpus (duplicates dropped), then the edge cases; returns them and how many hypothesis
    made."""
    seen: set[str] = set()
    cases: list[Case] = []

    def register(example: tuple[dict[str, Json], list[str], list[str]]) -> None:
        body, broken, applied = copy.deepcopy(example)
        key = json.dumps(body, sort_keys=True)
        if key in seen:
            return
        seen.add(key)
        case = Case(len(cases), body, broken, applied)
        if body["metadata"]["name"] == "NAME":
            body["metadata"]["name"] = case.name
        ref = get(body, ("spec", "scaleTargetRef"))
        if isinstance(ref, dict) and ref.get("name") == "TARGET":
            ref["name"] = case.name
        cases.append(case)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(scaler_objects())
    def collect(example: tuple[dict[str, Json], list[str], list[str]]) -> None:
        register(example)

    collect()
    generated = len(cases)
    for edge in edge_cases():
        register(edge)
    return cases, generated


# --------------------------------------------------------------------------- the run


def _api(cluster: LocalCluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def _create(api: client.CustomObjectsApi, case: Case) -> None:
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, case.body, field_validation="Strict",
                                            _request_timeout=60)
        case.status = 201
    except ApiException as exc:
        case.status = int(exc.status or 0)
        try:
            case.message = str(json.loads(exc.body or "{}").get("message", exc.body))
        except ValueError:
            case.message = str(exc.body or exc.reason)


def _targets_and_quota(cases: list[Case]) -> str:
    """A Deployment for every scaler to find, in a namespace whose quota lets none of them make a ReplicaSet
    or a pod: whatever replica count a fuzzed scaler sets stays on paper."""
    items: list[dict[str, Json]] = [{
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "nothing-runs", "namespace": NS},
        "spec": {"hard": {"pods": "0", "count/replicasets.apps": "0"}},
    }]
    for case in cases:
        items.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": case.name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": case.name}},
                     "template": {"metadata": {"labels": {"app": case.name}},
                                  "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}},
        })
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@dataclass
class Report:
    cases: list[Case]
    ready: dict[str, dict[str, Json]] = field(default_factory=dict)  # accepted name -> its Ready condition

    def figures(self, generated: int, exceptions: int, restarts: int) -> str:
        rejected = [c for c in self.cases if c.status != 201]
        reasons = Counter(f"{c.get('status')}/{c.get('reason')}" for c in self.ready.values())
        return (f"{len(self.cases)} examples ({generated} from hypothesis, {len(self.cases) - generated} edge "
                f"cases): {len(rejected)} rejected by the API server "
                f"({dict(Counter(c.status for c in rejected))}), {len(self.cases) - len(rejected)} accepted and "
                f"{len(self.ready)} reported by the operator ({dict(sorted(reasons.items()))}); handler "
                f"exceptions {exceptions}; operator restarts {restarts}")


def _ready_conditions(cluster: LocalCluster) -> dict[str, dict[str, Json]]:
    out = cluster.kubectl("-n", NS, "get", PLURAL, "-o", "json", check=False, timeout=120)
    if out.returncode != 0:
        return {}
    found = {}
    for item in json.loads(out.stdout).get("items", []):
        meta, status = item["metadata"], item.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("observedGeneration") == meta.get("generation"):
                found[meta["name"]] = cond
    return found


@pytest.fixture
def fuzz_namespace(cluster: LocalCluster) -> Iterator[str]:
    install_crds(cluster)
    cluster.kubectl("create", "namespace", NS)
    yield NS
    # kopf put a finalizer on every scaler it served and its operator is gone: lift them, or the namespace
    # would stay Terminating.
    api = _api(cluster)
    listed: Any = api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    items = listed.get("items", [])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda item: api.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, item["metadata"]["name"], {"metadata": {"finalizers": None}}), items))
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_fuzzed_scalers_are_rejected_naming_the_field_or_reported_by_the_operator(
    cluster: LocalCluster, fuzz_namespace: str, traffic_db: str, tmp_path: Path
) -> None:
    marks = [("start", time.monotonic())]
    cases, generated = generate_corpus()
    assert generated >= 500, f"hypothesis made only {generated} distinct examples"
    marks.append(("corpus", time.monotonic()))
    cluster.kubectl("create", "-f", "-", input=_targets_and_quota(cases), timeout=300)
    marks.append(("targets", time.monotonic()))

    log = tmp_path / "operator.log"
    # Real-time speed, at a time the `peak-api` trace covers: the edge cases' valid base has fresh traffic and a
    # forecast (Ready=True); hypothesis' series have no traffic, so no fit of theirs costs CPU.
    clock = Clock.scaled_from(peak_day_time(12, 0), 1.0)
    op = OperatorProcess(cluster, traffic_db, clock, log, extra_env={"PRESCALER_TIMER_INTERVAL": "1"}).start()
    try:
        api = _api(cluster)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda c: _create(api, c), cases))
        marks.append(("API calls", time.monotonic()))
        accepted = {c.name for c in cases if c.status == 201}
        valid = {c.name for c in cases if c.mutations == ["edge:valid"]}
        report = Report(cases)

        def all_reported() -> bool:
            assert op.alive(), f"the operator exited; log {log}"
            report.ready = _ready_conditions(cluster)
            # A valid scaler may first fall back while its forecast is fitted; it must end Ready.
            return accepted <= set(report.ready) and all(report.ready[n]["status"] == "True" for n in valid)

        with contextlib.suppress(AssertionError):  # the per-object checks below name the ones missing
            wait_for("a Ready condition on every accepted scaler", all_reported, timeout=120, interval=2.0)
        marks.append(("conditions", time.monotonic()))
        healthy = op.healthy()
        # The test starts the operator once and never again: had it died, it would not be alive now.
        restarts = 0 if op.alive() else 1
    finally:
        op.stop()
    text = log.read_text(errors="replace")
    exceptions = len(re.findall(r"failed with an exception", text))
    phases = ", ".join(f"{name} {t - marks[i][1]:.0f}s" for i, (name, t) in enumerate(marks[1:]))
    print(f"\nFUZZ FIGURES {report.figures(generated, exceptions, restarts)}; {phases}")

    problems: list[str] = []
    for case in cases:
        where = f"{case.name} {case.mutations} broke {case.broken}"
        if case.status == 201:
            cond = report.ready.get(case.name)
            if cond is None:
                problems.append(f"{where}: accepted, but the operator reported no Ready condition")
            elif cond["status"] == "False" and not (cond.get("reason") and cond.get("message")):
                problems.append(f"{where}: Ready=False without a reason and message: {cond}")
            elif cond.get("reason") in ("InvalidSpec", "UnknownSource") and "spec." not in cond["message"]:
                problems.append(f"{where}: the operator's message names no field: {cond['message']}")
            elif cond["status"] == "True" and cond.get("reason") not in READY_REASONS:
                problems.append(f"{where}: Ready=True with reason {cond.get('reason')}")
            elif case.mutations == ["edge:valid"] and cond["status"] != "True":
                problems.append(f"{where}: valid, but Ready=False: {cond}")
        elif case.status in (400, 422):
            if not any(path in case.message for path in case.broken):
                problems.append(f"{where}: rejected ({case.status}) without naming it: {case.message[:300]}")
        else:
            problems.append(f"{where}: unexpected answer {case.status}: {case.message[:300]}")
    assert not problems, f"{len(problems)} of {len(cases)} examples:\n" + "\n".join(problems[:40])
    assert healthy, f"the operator's /healthz failed; log {log}"
    # An exception out of a handler is an error the operator did not map to a condition: kopf retries it
    # every 60 s, a crash loop of that one scaler.
    assert restarts == 0 and exceptions == 0, f"{exceptions} handler exceptions; log {log}"
