"""Installing prescaler with real clients against the local control plane.

helm install / test / upgrade / uninstall, `kubectl apply` of crds/ and manifests/, a `kubectl auth can-i`
matrix for the operator's ServiceAccount, server-side dry-runs of every chart variant, and the CRD's
validation as the API server applies it. Pods never really run here (kwok marks them Ready), so these tests
prove what the API server and helm accept and grant, not what the container does.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from prescaler_dev.kwok import kwok_stages
from prescaler_dev.localcluster import LocalCluster
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.5  # seconds between kubectl polls: each one is a process on a small machine
CHART = ROOT / "charts" / "prescaler"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

RELEASE = "psc-e2e"
RELEASE_NS = "psc-e2e"
FULLNAME = f"{RELEASE}-prescaler"
SA = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}"
TEAM_NS = "psc-e2e-team"
KWOK_COMPLETE_LABEL = "prescaler.dev/kwok-complete"


def run(
    cluster: LocalCluster, *cmd: str, check: bool = True, input: str | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, env=cluster.env(), timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(cluster, "helm", *args, check=check)


def get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def ensure_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name, check=False)
    # The ServiceAccount admission plugin rejects pods until the namespace's default SA exists.
    wait_for(
        f"default ServiceAccount in {name}",
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        interval=POLL,
    )


def delete_namespaces(cluster: LocalCluster, *names: str) -> None:
    cluster.kubectl("delete", "namespace", *names, "--ignore-not-found", "--wait=true", "--timeout=120s")


def can_i(
    cluster: LocalCluster,
    verb: str,
    resource: str,
    *,
    namespace: str | None = None,
    subresource: str | None = None,
    as_user: str = SA,
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={as_user}"]
    args += ["--all-namespaces"] if namespace is None else ["-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    out = cluster.kubectl(*args, check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def deployment(cluster: LocalCluster) -> dict[str, Any]:
    result: dict[str, Any] = get(cluster, "-n", RELEASE_NS, "deployment", FULLNAME)
    return result


def release_objects(cluster: LocalCluster) -> list[str]:
    """Every object, in any namespace or cluster-wide, labelled as part of the release."""
    kinds = (
        "deployments,services,configmaps,secrets,serviceaccounts,rolebindings,roles,"
        "clusterroles,clusterrolebindings,clusterkopfpeerings,kopfpeerings,pods"
    )
    out = cluster.kubectl("get", kinds, "-A", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout
    return out.split()


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for name in ("predictivescalers.prescaler.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, crds: None) -> Iterator[str]:
    ensure_namespace(cluster, RELEASE_NS)
    helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--wait", "--timeout", "3m")
    try:
        yield RELEASE
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait")
        delete_namespaces(cluster, RELEASE_NS, TEAM_NS)


# --- helm install, auth matrix, test, upgrade, uninstall (in this order) --------------------------------


def test_helm_install_brings_the_operator_up(cluster: LocalCluster, release: str) -> None:
    status = json.loads(helm(cluster, "status", release, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    dep = deployment(cluster)
    assert dep["status"]["readyReplicas"] == 1
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and f"--peering={FULLNAME}" in args
    get(cluster, "clusterkopfpeering", FULLNAME)
    config = get(cluster, "-n", RELEASE_NS, "configmap", FULLNAME)["data"]["config.yaml"]
    assert yaml.safe_load(config)["sources"]["default"]["table"] == "traffic_log"
    service = get(cluster, "-n", RELEASE_NS, "service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == 9090
    # The Service finds the operator pod (kwok gave it an IP and marked it Ready).
    endpoints = get(
        cluster, "-n", RELEASE_NS, "endpointslices", "-l", f"kubernetes.io/service-name={FULLNAME}-metrics"
    )["items"]
    assert any(ep.get("endpoints") for ep in endpoints)


LEAST_PRIVILEGE = [
    # (verb, resource, subresource, namespace or None for all namespaces, allowed)
    ("patch", "deployments", "scale", "default", True),
    ("update", "deployments", "scale", "default", True),
    ("get", "deployments", "scale", "default", True),
    ("patch", "statefulsets", "scale", "default", True),
    ("list", "deployments", None, None, True),
    ("watch", "statefulsets", None, None, True),
    ("patch", "deployments", None, "default", False),
    ("update", "deployments", None, "default", False),
    ("delete", "deployments", None, "default", False),
    ("patch", "statefulsets", None, "default", False),
    ("patch", "replicasets", "scale", "default", False),
    ("get", "secrets", None, None, False),
    ("get", "secrets", None, RELEASE_NS, False),
    ("list", "secrets", None, "kube-system", False),
    ("get", "horizontalpodautoscalers.autoscaling", None, "default", True),
    ("patch", "horizontalpodautoscalers.autoscaling", None, "default", False),
    ("create", "events", None, "default", True),
    ("create", "events.events.k8s.io", None, "default", True),
    ("patch", "predictivescalers.prescaler.dev", "status", "default", True),
    ("patch", "predictivescalers.prescaler.dev", None, "default", True),
    ("watch", "predictivescalers.prescaler.dev", None, None, True),
    ("create", "predictivescalers.prescaler.dev", None, "default", False),
    ("delete", "predictivescalers.prescaler.dev", None, "default", False),
    ("patch", "clusterkopfpeerings.kopf.dev", None, None, True),
    ("create", "pods", None, "default", False),
    ("create", "clusterrolebindings", None, None, False),
    ("list", "namespaces", None, None, True),
    ("delete", "namespaces", None, None, False),
]


def test_service_account_has_least_privilege(cluster: LocalCluster, release: str) -> None:
    got = {
        (verb, res, sub, ns): can_i(cluster, verb, res, namespace=ns, subresource=sub)
        for verb, res, sub, ns, _ in LEAST_PRIVILEGE
    }
    expected = {(verb, res, sub, ns): allowed for verb, res, sub, ns, allowed in LEAST_PRIVILEGE}
    assert got == expected


def test_helm_test_hook(cluster: LocalCluster, release: str) -> None:
    """`helm test` runs the metrics check pod; on kwok a Stage completes pods carrying the label."""
    stages = json.dumps(kwok_stages(0.0))
    assert KWOK_COMPLETE_LABEL in stages, (
        f"the local cluster's kwok stages never complete a pod, so a helm test pod stays Running: "
        f"prescaler_dev.kwok.kwok_stages needs a stage moving pods labelled {KWOK_COMPLETE_LABEL}=true to Succeeded"
    )
    proc = helm(cluster, "test", release, "-n", RELEASE_NS, "--timeout", "2m")
    assert f"TEST SUITE:     {FULLNAME}-test-metrics" in proc.stdout
    assert "Phase:          Succeeded" in proc.stdout


def test_helm_upgrade_applies_changed_values(cluster: LocalCluster, release: str) -> None:
    ensure_namespace(cluster, TEAM_NS)
    before = deployment(cluster)
    helm(
        cluster,
        "upgrade",
        release,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--wait",
        "--timeout",
        "3m",
        "--set",
        "resources.requests.cpu=250m",
        "--set",
        "resources.limits.memory=1536Mi",
        "--set",
        f"watchNamespaces={{{TEAM_NS}}}",
        "--set",
        "rbac.hpaMinReplicas=true",
        "--set",
        "logLevel=debug",
    )
    after = deployment(cluster)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "250m"
    assert container["resources"]["limits"]["memory"] == "1536Mi"
    assert f"--namespace={TEAM_NS}" in container["args"]
    assert "--all-namespaces" not in container["args"]
    assert {e["name"]: e.get("value") for e in container["env"]}["PRESCALER_LOG_LEVEL"] == "DEBUG"
    wait_for(
        "the upgraded rollout",
        lambda: (
            deployment(cluster)["status"].get("updatedReplicas") == 1
            and deployment(cluster)["status"].get("readyReplicas") == 1
        ),
        interval=POLL,
    )
    # RBAC follows: scale and HPA writes in the watched namespace only; cluster-wide binding gone.
    assert can_i(cluster, "patch", "deployments", namespace=TEAM_NS, subresource="scale")
    assert can_i(cluster, "patch", "horizontalpodautoscalers.autoscaling", namespace=TEAM_NS)
    assert not can_i(cluster, "patch", "deployments", namespace="default", subresource="scale")
    assert not can_i(cluster, "get", "deployments", namespace="default")
    assert not can_i(cluster, "patch", "deployments", namespace=TEAM_NS)
    assert not can_i(cluster, "get", "secrets", namespace=TEAM_NS)
    assert cluster.kubectl("get", "clusterrolebinding", FULLNAME, check=False).returncode != 0
    get(cluster, "-n", TEAM_NS, "kopfpeering", FULLNAME)
    assert cluster.kubectl("get", "clusterkopfpeering", FULLNAME, check=False).returncode != 0


def test_upgrade_with_bad_values_is_refused_and_keeps_the_release(cluster: LocalCluster, release: str) -> None:
    proc = helm(
        cluster,
        "upgrade",
        release,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--reuse-values",
        "--set",
        "replicaCount=0",
        check=False,
    )
    assert proc.returncode != 0
    assert "/replicaCount" in proc.stderr
    status = json.loads(helm(cluster, "status", release, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


COLLECTOR = f"{FULLNAME}-collector"
COLLECTOR_SA = f"system:serviceaccount:{RELEASE_NS}:{COLLECTOR}"


def test_helm_upgrade_adds_the_collector_with_a_lease_only_role(cluster: LocalCluster, release: str) -> None:
    """The collector values of the kind path (a Prometheus feed), without the ServiceMonitor (its CRD belongs to
    the Prometheus operator, which this cluster does not have)."""
    helm(cluster, "upgrade", release, str(CHART), "-n", RELEASE_NS, "--reuse-values", "--wait", "--timeout", "3m",
         "-f", str(CHART / "ci" / "collector-values.yaml"), "--set", "serviceMonitor.enabled=false")
    collector = get(cluster, "-n", RELEASE_NS, "deployment", COLLECTOR)
    assert collector["spec"]["replicas"] == 2  # the default: a leader and a standby on the Lease
    wait_for("the collector Deployment ready",
             lambda: get(cluster, "-n", RELEASE_NS, "deployment", COLLECTOR)["status"].get("readyReplicas") == 2,
             interval=POLL)
    spec = collector["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[0] == "collect" and "--config=/etc/prescaler/config.yaml" in args
    assert "--leader-election" in args and f"--lease-namespace={RELEASE_NS}" in args
    assert spec["serviceAccountName"] == COLLECTOR
    config = yaml.safe_load(get(cluster, "-n", RELEASE_NS, "configmap", FULLNAME)["data"]["config.yaml"])
    (feed,) = config["feeds"]
    assert feed["name"] == "web" and feed["prometheus"]["services"] == ["workout-api"]
    service = get(cluster, "-n", RELEASE_NS, "service", f"{COLLECTOR}-metrics")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    # Its one grant: the Lease, in the release namespace; nothing of the operator's.
    for verb in ("get", "create", "update"):
        assert can_i(cluster, verb, "leases.coordination.k8s.io", namespace=RELEASE_NS, as_user=COLLECTOR_SA)
    for verb, resource, namespace, sub in (
        ("delete", "leases.coordination.k8s.io", RELEASE_NS, None),
        ("get", "leases.coordination.k8s.io", TEAM_NS, None),
        ("patch", "deployments", TEAM_NS, "scale"),
        ("get", "secrets", RELEASE_NS, None),
        ("list", "predictivescalers.prescaler.dev", None, None),
    ):
        assert not can_i(cluster, verb, resource, namespace=namespace, subresource=sub, as_user=COLLECTOR_SA), \
            (verb, resource, namespace, sub)


def test_helm_uninstall_leaves_nothing_behind(cluster: LocalCluster, release: str) -> None:
    assert release_objects(cluster), "the release should own objects before the uninstall"
    helm(cluster, "uninstall", release, "-n", RELEASE_NS, "--wait", "--timeout", "2m")
    wait_for("release objects to go", lambda: release_objects(cluster) == [], timeout=60, interval=POLL)
    for kind, name in (
        ("clusterrole", FULLNAME),
        ("clusterrole", f"{FULLNAME}-cluster"),
        ("clusterrolebinding", f"{FULLNAME}-cluster"),
    ):
        assert cluster.kubectl("get", kind, name, check=False).returncode != 0, (kind, name)
    for kind, name in (
        ("serviceaccount", FULLNAME),
        ("service", f"{FULLNAME}-metrics"),
        ("configmap", FULLNAME),
        ("deployment", FULLNAME),
        ("secret", f"{FULLNAME}-database"),
        ("deployment", COLLECTOR),
        ("serviceaccount", COLLECTOR),
        ("role", COLLECTOR),
        ("service", f"{COLLECTOR}-metrics"),
    ):
        assert cluster.kubectl("-n", RELEASE_NS, "get", kind, name, check=False).returncode != 0, (kind, name)
    assert not can_i(cluster, "patch", "deployments", namespace=TEAM_NS, subresource="scale")
    # CRDs stay (helm never deletes them): removing them would delete every user's scalers.
    get(cluster, "crd", "predictivescalers.prescaler.dev")


# --- plain manifests ------------------------------------------------------------------------------------


def test_kubectl_apply_of_crds_manifests_and_examples(cluster: LocalCluster, crds: None) -> None:
    try:
        cluster.kubectl("apply", "-f", str(ROOT / "crds"), "-f", str(ROOT / "manifests"))
        wait_for(
            "the operator Deployment",
            lambda: (
                get(cluster, "-n", "prescaler-system", "deployment", "prescaler")["status"].get("readyReplicas") == 1
            ),
            interval=POLL,
        )
        assert can_i(
            cluster,
            "patch",
            "deployments",
            namespace="fitness",
            subresource="scale",
            as_user="system:serviceaccount:prescaler-system:prescaler",
        )
        assert not can_i(
            cluster,
            "get",
            "secrets",
            namespace="prescaler-system",
            as_user="system:serviceaccount:prescaler-system:prescaler",
        )
        # The kind path's demo PostgreSQL and data Job, checked by the API server without creating them.
        demo = cluster.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "manifests" / "demo"))
        assert "deployment.apps/prescaler-postgres created (server dry run)" in demo.stdout
        assert "job.batch/prescaler-simulate created (server dry run)" in demo.stdout
        cluster.kubectl("apply", "-f", str(ROOT / "manifests" / "examples"))
        scalers = {s["metadata"]["name"]: s for s in get(cluster, "-n", "fitness", "predictivescalers")["items"]}
        assert set(scalers) == {"workout-api", "search-api"}
        # The API server filled the defaults the example leaves out.
        search = scalers["search-api"]["spec"]
        assert search["scaleTargetRef"]["apiVersion"] == "apps/v1"
        assert search["forecast"]["step"] == "5m" and search["forecast"]["horizon"] == "2d"
        assert search["scaling"]["scaleDown"] == {"stabilizationWindow": "15m", "maxStepPercent": 50}
        assert search["fallback"] == {"staleAfter": "2h", "action": "HoldCurrent"}
        assert search["series"]["source"] == "default"
        header = cluster.kubectl("get", "psc", "-n", "fitness").stdout.splitlines()[0].split()
        assert header == ["NAME", "TARGET", "MODE", "CURRENT", "DESIRED", "NEXT", "PEAK", "ERROR", "SCORE", "READY",
                          "AGE"]
        assert "workout-api" in cluster.kubectl("get", "prescaler", "-n", "fitness", "-o", "name").stdout
    finally:
        cluster.kubectl(
            "delete", "-f", str(ROOT / "manifests" / "examples"), "--ignore-not-found", "--wait=true", "--timeout=120s"
        )
        cluster.kubectl("delete", "-f", str(ROOT / "manifests"), "--ignore-not-found", "--wait=true", "--timeout=120s")


# --- server-side dry-runs of every chart variant --------------------------------------------------------

# A stand-in for the Prometheus Operator's ServiceMonitor CRD with the subset of its schema the chart uses,
# so the servicemonitor variant's object is type-checked by the API server too.
SERVICEMONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                namespaceSelector:
                  type: object
                  properties:
                    matchNames: {type: array, items: {type: string}}
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: &duration {type: string, pattern: '^(0|([0-9]+(ms|s|m|h|d|w|y))+)$'}
                      scrapeTimeout: *duration
"""
DRY_NS = "psc-dry"


@pytest.fixture(scope="module")
def dry_run_namespaces(cluster: LocalCluster, crds: None) -> Iterator[None]:
    cluster.kubectl("apply", "-f", "-", input=SERVICEMONITOR_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    for ns in (DRY_NS, "team-a", "team-b"):
        ensure_namespace(cluster, ns)
    try:
        yield
    finally:
        delete_namespaces(cluster, DRY_NS, "team-a", "team-b")
        cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--ignore-not-found")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_server_side_dry_run_of_each_variant(cluster: LocalCluster, dry_run_namespaces: None, values: Path) -> None:
    rendered = helm(
        cluster, "template", "psc-dry", str(CHART), "-n", DRY_NS, "-f", str(values), "--kube-version", "1.33.0"
    ).stdout
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(rendered) if d})
    proc = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(rendered) if d]), proc.stdout
    assert "Deployment" in kinds and "ClusterRole" in kinds


# --- the CRD as the API server enforces it ---------------------------------------------------------------

GOOD_SCALER: dict[str, Any] = {
    "apiVersion": "prescaler.dev/v1alpha1",
    "kind": "PredictiveScaler",
    "metadata": {"name": "checkout", "namespace": "default"},
    "spec": {
        "scaleTargetRef": {"kind": "Deployment", "name": "checkout"},
        "minReplicas": 2,
        "maxReplicas": 20,
        "series": {"service": "checkout"},
        "capacity": {"requestsPerReplica": 500},
    },
}


def dry_apply(cluster: LocalCluster, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc), check=False)


def with_spec(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(GOOD_SCALER))
    doc["spec"].update(changes)
    return doc


def test_server_applies_defaults(cluster: LocalCluster, crds: None) -> None:
    proc = dry_apply(cluster, GOOD_SCALER)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)["spec"]
    assert spec["mode"] == "Auto" and spec["actuation"] == "Replicas"
    assert spec["capacity"]["per"] == "1m"
    assert spec["forecast"]["model"] == "auto" and spec["forecast"]["quantile"] == "upper"
    assert spec["scaling"]["leadTime"] == "5m" and spec["scaling"]["headroomPercent"] == 10
    assert spec["scaling"]["reactiveFloor"] is True


BAD_SCALERS = {
    "min above max": (
        with_spec(minReplicas=30),
        ["spec.minReplicas", "minReplicas must be less than or equal to maxReplicas"],
    ),
    "unknown mode": (with_spec(mode="Sometimes"), ["spec.mode", "Sometimes"]),
    "malformed duration": (with_spec(forecast={"horizon": "7 days"}), ["spec.forecast.horizon", "7 days"]),
    "zero capacity": (with_spec(capacity={"requestsPerReplica": 0}), ["spec.capacity.requestsPerReplica"]),
    "unknown target kind": (
        with_spec(scaleTargetRef={"kind": "DaemonSet", "name": "x"}),
        ["spec.scaleTargetRef.kind", "DaemonSet"],
    ),
    "wrong target apiVersion": (
        with_spec(scaleTargetRef={"apiVersion": "apps/v2", "kind": "Deployment", "name": "x"}),
        ["spec.scaleTargetRef.apiVersion", "apps/v1"],
    ),
    "missing service": (with_spec(series={"source": "default"}), ["spec.series.service", "Required"]),
    "headroom above 1000%": (with_spec(scaling={"headroomPercent": 5000}), ["spec.scaling.headroomPercent"]),
}


@pytest.mark.parametrize("case", BAD_SCALERS, ids=list(BAD_SCALERS))
def test_api_server_rejects_bad_scalers_naming_the_field(cluster: LocalCluster, crds: None, case: str) -> None:
    doc, expected = BAD_SCALERS[case]
    proc = dry_apply(cluster, doc)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr


def test_status_subresource_accepts_the_operator_status(cluster: LocalCluster, crds: None) -> None:
    doc = json.loads(json.dumps(GOOD_SCALER))
    doc["metadata"]["name"] = "status-shape"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    try:
        status = {
            "observedGeneration": 1,
            "currentReplicas": 3,
            "readyReplicas": 3,
            "desiredReplicas": 5,
            "lastDecisionTime": "2025-01-06T18:00:00Z",
            "model": "prophet",
            "forecastGeneratedAt": "2025-01-06T17:00:00+00:00",
            "forecastError": "6.1%",
            "reason": "forecast peak 14,200 rpm at 18:05 within lead 5m",
            "nextPeak": {"at": "2025-01-06T18:05:00Z", "requests": 14200, "replicas": 13},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2025-01-06T17:00:00Z",
                    "reason": "Scaling",
                    "message": "",
                }
            ],
            "kopf": {"progress": {"anything": {"retries": 1}}},
        }
        cluster.kubectl(
            "patch",
            "psc",
            "status-shape",
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
        stored = get(cluster, "psc", "status-shape", "-n", "default")["status"]
        assert stored["nextPeak"] == status["nextPeak"]
        assert stored["kopf"] == status["kopf"]
        row = cluster.kubectl("get", "psc", "status-shape", "-n", "default", "--no-headers").stdout.split()
        assert row[1:5] == ["checkout", "Auto", "3", "5"]
        assert "6.1%" in row and "True" in row
        bad = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "Yes",
                        "reason": "X",
                        "message": "",
                        "lastTransitionTime": "2025-01-06T17:00:00Z",
                    }
                ]
            }
        }
        proc = cluster.kubectl(
            "patch",
            "psc",
            "status-shape",
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(bad),
            check=False,
        )
        assert proc.returncode != 0
        assert "status.conditions[0].status" in proc.stderr
    finally:
        cluster.kubectl("delete", "psc", "status-shape", "-n", "default", "--ignore-not-found")
