"""The CRDs in crds/: well-formed, structural, self-consistent defaults, and the examples validate."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from prescaler.durations import parse_duration
from prescaler.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
SCALER_CRD = CRD_DIR / "prescaler.dev_predictivescalers.yaml"
EXAMPLES = ROOT / "manifests" / "examples"

Schema = dict[str, Any]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_crds() -> list[dict[str, Any]]:
    return [d for p in sorted(CRD_DIR.glob("*.yaml")) for d in load_all(p)]


def scaler_schema() -> Schema:
    (crd,) = load_all(SCALER_CRD)
    (version,) = crd["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def strict(schema: Schema) -> Schema:
    """JSON Schema that rejects unknown fields, as `kubectl apply`'s strict field validation does."""
    out = copy.deepcopy(schema)
    for _, node in walk(out):
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
    out["properties"]["metadata"] = {"type": "object"}
    return out


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Kubernetes-style defaulting: fill absent fields that have a default, recursively."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def check_cel_rules(obj: dict[str, Any]) -> None:
    """The CRD's CEL rules, restated in Python for the offline checks of the examples."""
    spec = obj["spec"]
    assert spec["minReplicas"] <= spec["maxReplicas"], "minReplicas must be <= maxReplicas"
    assert spec["scaleTargetRef"]["apiVersion"] == "apps/v1"


def example_scalers() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") == "PredictiveScaler":
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


def test_every_file_holds_apiextensions_v1_crds() -> None:
    crds = all_crds()
    assert {c["metadata"]["name"] for c in crds} == {
        "predictivescalers.prescaler.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    for crd in crds:
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["kind"] == "CustomResourceDefinition"
        names = crd["spec"]["names"]
        assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
        assert sum(v["storage"] for v in crd["spec"]["versions"]) == 1


def test_predictivescaler_names_scope_and_subresource() -> None:
    (crd,) = load_all(SCALER_CRD)
    spec = crd["spec"]
    assert spec["group"] == "prescaler.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "PredictiveScaler",
        "listKind": "PredictiveScalerList",
        "plural": "predictivescalers",
        "singular": "predictivescaler",
        "shortNames": ["psc"],
        "categories": ["all", "prescaler"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    """The API server's structural-schema rules that a YAML file can get wrong."""
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        assert root.get("type") == "object"
        for path, node in walk(root):
            where = f"{crd['metadata']['name']}{path or '.'}"
            untyped_ok = any(
                node.get(k) for k in ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
            )
            if not untyped_ok:
                assert "type" in node, f"{where}: no type"
            assert "$ref" not in node, f"{where}: $ref is not allowed"
            assert not ("properties" in node and isinstance(node.get("additionalProperties"), dict)), where
            for keyword in ("required", "enum"):
                if keyword in node:
                    assert isinstance(node[keyword], list) and node[keyword], f"{where}: empty {keyword}"
            for name in node.get("required", []):
                assert name in node.get("properties", {}), f"{where}: required {name} is not a property"
            if node.get("x-kubernetes-list-type") == "map":
                keys = node["x-kubernetes-list-map-keys"]
                required = set(node["items"].get("required", []))
                assert set(keys) <= required, f"{where}: map keys must be required"
        # metadata may only be constrained on name/generateName; we leave it alone entirely.
        assert root["properties"]["metadata"] == {"type": "object"}


def test_status_keeps_only_the_framework_bookkeeping_open() -> None:
    status = scaler_schema()["properties"]["status"]
    assert not status.get("x-kubernetes-preserve-unknown-fields")
    open_nodes = [p for p, n in walk(status, ".status") if n.get("x-kubernetes-preserve-unknown-fields")]
    assert open_nodes == [".status.kopf"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    # No floats anywhere in the resource (API conventions); fractions travel as strings.
    assert [p for p, n in walk(scaler_schema()) if n.get("type") == "number"] == []


def test_fields_the_operator_parses_exist_with_their_types() -> None:
    nodes = dict(walk(scaler_schema()))
    expected = {
        ".spec.scaleTargetRef.apiVersion": "string",
        ".spec.scaleTargetRef.kind": "string",
        ".spec.scaleTargetRef.name": "string",
        ".spec.minReplicas": "integer",
        ".spec.maxReplicas": "integer",
        ".spec.mode": "string",
        ".spec.actuation": "string",
        ".spec.series.source": "string",
        ".spec.series.service": "string",
        ".spec.capacity.requestsPerReplica": "integer",
        ".spec.capacity.per": "string",
        ".spec.forecast.model": "string",
        ".spec.forecast.history": "string",
        ".spec.forecast.horizon": "string",
        ".spec.forecast.step": "string",
        ".spec.forecast.refreshInterval": "string",
        ".spec.forecast.quantile": "string",
        ".spec.scaling.interval": "string",
        ".spec.scaling.leadTime": "string",
        ".spec.scaling.headroomPercent": "integer",
        ".spec.scaling.reactiveFloor": "boolean",
        ".spec.scaling.scaleDown.stabilizationWindow": "string",
        ".spec.scaling.scaleDown.maxStepPercent": "integer",
        ".spec.fallback.staleAfter": "string",
        ".spec.fallback.action": "string",
        ".status.observedGeneration": "integer",
        ".status.currentReplicas": "integer",
        ".status.readyReplicas": "integer",
        ".status.desiredReplicas": "integer",
        ".status.lastScaleTime": "string",
        ".status.lastDecisionTime": "string",
        ".status.model": "string",
        ".status.forecastGeneratedAt": "string",
        ".status.forecastError": "string",
        ".status.reason": "string",
        ".status.nextPeak.at": "string",
        ".status.nextPeak.requests": "integer",
        ".status.nextPeak.replicas": "integer",
        ".status.conditions": "array",
        ".status.kopf": "object",
    }
    assert {p: nodes[p]["type"] for p in expected if p in nodes} == expected
    assert nodes[".spec.mode"]["enum"] == ["Auto", "ForecastOnly", "Paused"]
    assert nodes[".spec.actuation"]["enum"] == ["Replicas", "HPAMinReplicas"]
    assert nodes[".spec.forecast.model"]["enum"] == ["auto", "prophet", "seasonal-naive", "holt-winters"]
    assert nodes[".spec.fallback.action"]["enum"] == ["HoldCurrent", "ScaleToMax"]
    assert set(scaler_schema()["properties"]["spec"]["required"]) == {
        "scaleTargetRef",
        "maxReplicas",
        "series",
        "capacity",
    }


def test_every_field_is_described() -> None:
    """Descriptions feed the field reference in docs/reference.md."""
    undocumented = [
        p
        for p, n in walk(scaler_schema())
        if p.startswith((".spec.", ".status.")) and "description" not in n and not p.startswith(".status.conditions[].")
    ]
    assert undocumented == []


def test_defaults_satisfy_their_own_constraints() -> None:
    checked = 0
    for _, node in walk(scaler_schema()):
        if "default" in node:
            jsonschema.validate(node["default"], strict(node) if "properties" in node else node)
            checked += 1
    assert checked >= 20


def test_nested_defaults_fill_an_empty_spec() -> None:
    """Optional sub-objects default to {} so that their fields' defaults apply too."""
    schema = scaler_schema()["properties"]["spec"]
    spec = apply_defaults(
        schema,
        {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "maxReplicas": 5,
            "series": {"service": "web"},
            "capacity": {"requestsPerReplica": 100},
        },
    )
    assert spec["minReplicas"] == 1
    assert spec["scaleTargetRef"]["apiVersion"] == "apps/v1"
    assert spec["forecast"] == {
        "model": "auto",
        "history": "14d",
        "horizon": "1d",
        "step": "5m",
        "refreshInterval": "1h",
        "quantile": "upper",
    }
    assert spec["scaling"]["scaleDown"] == {"stabilizationWindow": "15m", "maxStepPercent": 50}
    assert spec["fallback"] == {"staleAfter": "2h", "action": "HoldCurrent"}
    assert spec["series"]["source"] == "default"
    assert spec["capacity"]["per"] == "1m"
    jsonschema.validate(spec, strict(schema))


# Zero durations ("0m") match the pattern; the operator rejects them and reports a condition.
DURATION_CASES = ["30s", "5m", "1h30m", "14d", "2w", "90s", "1h0m", "5", "m", "5min", "1.5h", "-5m", "", "1H", "P1D"]


@pytest.mark.parametrize("text", DURATION_CASES)
def test_duration_pattern_agrees_with_the_operator_parser(text: str) -> None:
    durations = [n for p, n in walk(scaler_schema()) if n.get("pattern") == r"^([0-9]+(s|m|h|d|w))+$"]
    assert len(durations) == 11
    for node in durations:
        assert "duration" in node["description"]
    accepted_by_crd = re.search(durations[0]["pattern"], text) is not None
    try:
        parse_duration(text)
        accepted_by_parser = True
    except InputError:
        accepted_by_parser = False
    assert accepted_by_crd == accepted_by_parser


def test_cel_rules_name_the_fields() -> None:
    spec = scaler_schema()["properties"]["spec"]
    rule, schedule_rule = spec["x-kubernetes-validations"]
    assert rule["message"] == "minReplicas must be less than or equal to maxReplicas"
    assert rule["fieldPath"] == ".minReplicas"
    assert schedule_rule["message"] == "a schedule's minReplicas must be less than or equal to maxReplicas"
    assert schedule_rule["fieldPath"] == ".schedules"
    target_rule = spec["properties"]["scaleTargetRef"]["x-kubernetes-validations"][0]
    assert "apps/v1" in target_rule["message"]


def test_printer_columns_point_at_schema_fields() -> None:
    (crd,) = load_all(SCALER_CRD)
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Target",
        "Mode",
        "Current",
        "Desired",
        "Next Peak",
        "Next Window",
        "Error",
        "Score",
        "Effective",
        "Ready",
        "Age",
    ]
    nodes = dict(walk(scaler_schema()))
    for column in columns:
        path = re.sub(r"\[\?.*\]", "[]", column["jsonPath"])
        if path.startswith(".metadata."):
            continue
        assert path.split("[]")[0] in nodes, column
    ready = next(c for c in columns if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_there_are_examples_for_both_actuations() -> None:
    actuations = {apply_defaults(scaler_schema(), doc)["spec"]["actuation"] for _, doc in example_scalers()}
    assert actuations == {"Replicas", "HPAMinReplicas"}


@pytest.mark.parametrize(("name", "doc"), example_scalers(), ids=[n for n, _ in example_scalers()])
def test_examples_validate_against_the_schema(name: str, doc: dict[str, Any]) -> None:
    schema = strict(scaler_schema())
    assert doc["apiVersion"] == "prescaler.dev/v1alpha1"
    jsonschema.validate(doc, schema)
    defaulted = apply_defaults(scaler_schema(), doc)
    jsonschema.validate(defaulted, schema)
    check_cel_rules(defaulted)


def test_examples_target_workloads_defined_next_to_them() -> None:
    docs = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in load_all(p)]
    workloads = {
        (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for _, scaler in example_scalers():
        ref = scaler["spec"]["scaleTargetRef"]
        assert (ref["kind"], scaler["metadata"]["namespace"], ref["name"]) in workloads
        assert scaler["metadata"]["namespace"] in namespaces
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    for _, scaler in example_scalers():
        if scaler["spec"].get("actuation") == "HPAMinReplicas":
            target = scaler["spec"]["scaleTargetRef"]["name"]
            assert any(h["spec"]["scaleTargetRef"]["name"] == target for h in hpas)


BAD_SPECS = {
    "unknown mode": ("mode", "Sometimes"),
    "malformed duration": ("forecast", {"horizon": "7 days"}),
    "zero maxReplicas": ("maxReplicas", 0),
    "too many replicas": ("maxReplicas", 10001),
    "unknown kind": ("scaleTargetRef", {"kind": "DaemonSet", "name": "x"}),
    "bad target name": ("scaleTargetRef", {"kind": "Deployment", "name": "Web_API"}),
    "SQL in the series": ("series", {"service": "x'; DROP TABLE traffic_log; --"}),
    "bad source name": ("series", {"source": "Default", "service": "web"}),
    "zero capacity": ("capacity", {"requestsPerReplica": 0}),
    "fractional capacity": ("capacity", {"requestsPerReplica": 1.5}),
    "step over 100%": ("scaling", {"scaleDown": {"maxStepPercent": 150}}),
    "unknown field": ("replicas", 3),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_schema_rejects_bad_specs(case: str) -> None:
    _, good = example_scalers()[0]
    key, value = BAD_SPECS[case]
    bad = copy.deepcopy(good)
    bad["spec"][key] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, strict(scaler_schema()))


def test_peering_crds_leave_status_open_for_the_framework() -> None:
    peering = [c for c in all_crds() if c["spec"]["group"] == "kopf.dev"]
    scopes = {c["spec"]["names"]["kind"]: c["spec"]["scope"] for c in peering}
    assert scopes == {"ClusterKopfPeering": "Cluster", "KopfPeering": "Namespaced"}
    for crd in peering:
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1"
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        # The framework merge-patches peers into the main resource; a status subresource would drop them.
        assert "subresources" not in version


def test_field_reference_lists_every_spec_field() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "render-manifests.py"), "--field-reference"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    documented = set(re.findall(r"^\| `([^`]+)` \|", out, flags=re.M))
    # A list's items are described by the list's row and their own fields' rows.
    spec_paths = {p.lstrip(".") for p, _ in walk(scaler_schema()) if p.startswith(".spec") and not p.endswith("[]")}
    assert spec_paths <= documented
    assert '| `spec.forecast.horizon` | duration | `"1d"` |' in out


def test_date_columns_show_only_past_times() -> None:
    """kubectl prints a future time in a `date` column as <invalid>: the next peak must be a string."""
    (crd,) = load_all(SCALER_CRD)
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    dates = {c["jsonPath"] for c in columns.values() if c["type"] == "date"}
    assert dates == {".metadata.creationTimestamp"}
    assert columns["Next Peak"] == {**columns["Next Peak"], "type": "string",
                                    "jsonPath": ".status.nextPeak.summary"}


def test_limited_by_enum_is_the_planners() -> None:
    from prescaler.planning import LIMITED_BY

    nodes = dict(walk(scaler_schema()))
    assert nodes[".status.limitedBy"]["enum"] == list(LIMITED_BY)
