"""The operator image, run the way a cluster runs it.

The image comes from `hack/build-image.sh` (cached: a rebuild with nothing changed is Docker's layer cache).
Every container runs with a read-only root filesystem, user 10001, a tmpfs on /tmp, no capabilities and
the host's network, so it reaches the test PostgreSQL, Prometheus and the local API server on loopback:
- the command line: `--help`, a forecast with every model (Prophet's cmdstan included) on a series that
  `prescaler simulate` wrote, the one-line refusal without a database URL, `collect --once` from a real
  Prometheus;
- the operator: the chart's pod spec (rendered by helm) turned into `docker run`, with a real ServiceAccount
  token mounted where a pod has it and bound only to the chart's RBAC, scaling a Deployment ahead of its peak.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from prescaler.clock import Clock
from prescaler.collect.prometheus import floor_minute
from prescaler.forecasting.interface import MODEL_NAMES
from prescaler_dev.localcluster import LocalCluster
from promserver import PrometheusServer
from waiting import wait_for

from .operator_support import (
    PEAK_REPLICAS,
    apply,
    condition,
    deployment_yaml,
    free_port,
    get_json,
    install_crds,
    namespace_yaml,
    peak_day_time,
    scaler_yaml,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "prescaler"
USER = "10001:10001"
# What the chart's securityContext asks of a pod, in docker's terms (the operator test derives its own from
# the rendered pod spec).
AS_IN_A_POD = ["--read-only", "--user", USER, "--tmpfs", "/tmp", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--network", "host"]
NO_DATABASE_URL = "prescaler: error: no database URL: set PRESCALER_DATABASE_URL or pass --database-url"


def docker() -> str:
    found = shutil.which("docker")
    if found is None:
        pytest.fail("docker not found: hack/build-image.sh installs Debian's docker.io")
    return found


@pytest.fixture(scope="session")
def image() -> str:
    proc = subprocess.run(["bash", str(ROOT / "hack" / "build-image.sh")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"hack/build-image.sh failed:\n{proc.stderr[-6000:]}"
    return proc.stdout.strip().splitlines()[-1]


def run_image(image: str, *args: str, env: dict[str, str] | None = None, entrypoint: str | None = None,
              volumes: tuple[tuple[Path, str], ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [docker(), "run", "--rm", *AS_IN_A_POD]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    for host, container in volumes:
        cmd += ["--volume", f"{host}:{container}:ro"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=900, check=False)


# --- the image itself -----------------------------------------------------------------------------------------


def test_image_runs_as_10001_with_the_cli_as_entrypoint(image: str) -> None:
    (info,) = json.loads(subprocess.run([docker(), "image", "inspect", image], capture_output=True, text=True,
                                        check=True).stdout)
    config = info["Config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["prescaler"]
    assert config["Cmd"] == ["run", "--all-namespaces"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HOME"] == env["TMPDIR"] == "/tmp"


def test_help(image: str) -> None:
    proc = run_image(image, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: prescaler")
    for command in ("migrate", "simulate", "import", "forecast", "backtest", "collect", "run"):
        assert command in proc.stdout


_INSTALLED = """
import importlib.metadata, importlib.util, json, os
print(json.dumps({
    "distributions": sorted({d.metadata["Name"] for d in importlib.metadata.distributions()}),
    "prescaler_files": [str(f) for f in importlib.metadata.files("prescaler")],
    "importable": {m: importlib.util.find_spec(m) is not None for m in ("prescaler", "prescaler_dev", "pip")},
    "sources_left": os.path.exists("/src"),
}))
"""


def test_no_development_tooling_inside(image: str) -> None:
    proc = run_image(image, "-c", _INSTALLED, entrypoint="python3")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    dev_only = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]} - runtime
    installed = {canonicalize_name(n) for n in found["distributions"]}
    assert "prescaler" in installed
    assert installed & dev_only == set()
    assert found["importable"] == {"prescaler": True, "prescaler_dev": False, "pip": False}
    assert [f for f in found["prescaler_files"] if f.startswith("prescaler_dev")] == []
    assert not found["sources_left"]


# --- the command line against PostgreSQL and Prometheus -------------------------------------------------------

SIMULATED = "image-web"


@pytest.fixture(scope="module")
def simulated(image: str, pg_url: str) -> str:
    """The module's database with three weeks of `prescaler simulate` traffic, written by the image."""
    proc = run_image(image, "--database-url", pg_url, "simulate", "--days", "21", "--step", "5m",
                     "--service", SIMULATED)
    assert proc.returncode == 0, proc.stderr
    assert f"for {SIMULATED}" in proc.stdout
    return pg_url


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_forecast_with_each_model(image: str, simulated: str, model: str) -> None:
    proc = run_image(image, "--database-url", simulated, "forecast", "--series", SIMULATED, "--model", model,
                     "--horizon", "1d")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = re.match(r"model (\S+) \(", proc.stdout)
    assert chosen, proc.stdout
    if model != "auto":
        # The model asked for, not a fallback: Prophet really ran cmdstan under the read-only root.
        assert chosen.group(1) == model, proc.stdout
    engine = sa.create_engine(simulated)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT model FROM forecasts WHERE scaler_key = :key ORDER BY id DESC LIMIT 1"),
                {"key": f"cli/{SIMULATED}"}).scalar_one()
    finally:
        engine.dispose()
    assert stored == chosen.group(1)


def test_without_a_database_url_one_line_and_exit_2(image: str) -> None:
    proc = run_image(image, "forecast", "--series", SIMULATED)
    assert (proc.returncode, proc.stdout, proc.stderr.splitlines()) == (2, "", [NO_DATABASE_URL])


def test_collect_once_from_prometheus(image: str, make_database: Any, tmp_path: Path) -> None:
    end = floor_minute(datetime.now(UTC)) - timedelta(hours=2)
    samples = {end - i * timedelta(minutes=1): 500 + 7 * i for i in range(60)}
    lines = ["# TYPE web_requests_per_minute gauge"]
    lines += [f'web_requests_per_minute{{service="web"}} {v} {int(t.timestamp())}' for t, v in sorted(samples.items())]
    prom = PrometheusServer([], workdir=tmp_path / "prometheus", retention="2d")
    prom.workdir.mkdir()
    prom.backfill_openmetrics("\n".join([*lines, "# EOF", ""]))
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config_dir.chmod(0o755)
    url = make_database()
    with prom:
        (config_dir / "config.yaml").write_text(yaml.safe_dump({
            "sources": {"default": {}},
            "feeds": [{"name": "web", "source": "default", "prometheus": {
                "url": prom.url, "query": 'sum(web_requests_per_minute{service="$service"})',
                "services": ["web"], "backfill": "1d"}}],
        }))
        proc = run_image(image, "collect", "--config", "/etc/prescaler/config.yaml", "--once",
                         env={"PRESCALER_DATABASE_URL": url}, volumes=((config_dir, "/etc/prescaler"),))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT ts, requests FROM traffic_log WHERE service = 'web' AND endpoint = '*'")).all()
    finally:
        engine.dispose()
    # A value at t is the minute ending at t.
    assert {ts.astimezone(UTC): int(n) for ts, n in rows} == {
        t - timedelta(minutes=1): v for t, v in samples.items()}


# --- the operator: the chart's pod, in a container, with the chart's RBAC --------------------------------------

NS = "e2e-image"
RELEASE = "psc-image"
SPEED = 60.0  # one real second = one simulated minute
START = peak_day_time(17, 0)  # base load until the ramp at 17:30; the peak is 18:00-19:00
PEAK = peak_day_time(18, 0)


@dataclass
class Chart:
    """The objects of the release as `helm template` renders them watching its own namespace (RoleBindings
    there, no cluster-wide list), by kind."""

    objects: list[dict[str, Any]]

    def one(self, kind: str) -> dict[str, Any]:
        (obj,) = [o for o in self.objects if o["kind"] == kind]
        return obj

    def without(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] not in kinds]


def render_chart(cluster: LocalCluster, image: str, database_url: str, metrics_port: int,
                 liveness_port: int) -> Chart:
    repository, tag = image.rsplit(":", 1)
    templates = ("serviceaccount.yaml", "rbac.yaml", "peering.yaml", "configmap.yaml", "secret.yaml",
                 "deployment.yaml")
    proc = subprocess.run(
        ["helm", "template", RELEASE, str(CHART), "--namespace", NS, "--validate",
         *[arg for t in templates for arg in ("--show-only", f"templates/{t}")],
         "--set", f"image.repository={repository}",
         "--set-string", f"image.tag={tag}", "--set-string", f"database.url={database_url}",
         "--set", f"metrics.port={metrics_port}", "--set", f"livenessPort={liveness_port}",
         "--set", "workers=1",
         # Watching its own namespace only: the chart's least-privilege variant, RoleBindings and no
         # cluster-wide list of any kind, which the operator must live with.
         "--set-json", f"watchNamespaces={json.dumps([NS])}",
         # The scaled clock and a quick timer, as the other operator tests use: extraEnv is the chart's way.
         "--set-json", "extraEnv=" + json.dumps([
             {"name": k, "value": v} for k, v in {"PRESCALER_TIMER_INTERVAL": "0.25"}.items()])],
        capture_output=True, text=True, env=cluster.env(), check=False)
    assert proc.returncode == 0, proc.stderr
    return Chart([o for o in yaml.safe_load_all(proc.stdout) if o])


def docker_run_for_pod(chart: Chart, workdir: Path, *, service_account_dir: Path, api_port: int,
                       pod_name: str, extra_env: dict[str, str]) -> list[str]:
    """`docker run` arguments doing what a kubelet does with the chart's pod template: its image with its
    args (the image's entrypoint), its env (secretKeyRef and fieldRef resolved), its volumes (configMap as
    files, emptyDir as tmpfs), its security context, and the ServiceAccount token where a pod has it."""
    pod = chart.one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container, "the chart relies on the image's entrypoint"
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = [docker(), "run", "--detach", "--network", "host",
            "--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if security.get("capabilities", {}).get("drop") == ["ALL"]:
        args += ["--cap-drop", "ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]

    secret = chart.one("Secret")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        else:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": pod_name, "metadata.namespace": NS}[field]
    env.update(extra_env)
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", mount["mountPath"]]
        else:
            configmap = chart.one("ConfigMap")
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            files = workdir / mount["name"]
            files.mkdir(mode=0o755)
            for key, text in configmap["data"].items():
                (files / key).write_text(text)
                (files / key).chmod(0o644)
            args += ["--volume", f"{files}:{mount['mountPath']}:ro"]
    args += ["--volume", f"{service_account_dir}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
    return [*args, container["image"], *container["args"]]


@dataclass
class OperatorContainer:
    container_id: str
    metrics_port: int
    liveness_port: int

    def logs(self) -> str:
        proc = subprocess.run([docker(), "logs", self.container_id], capture_output=True, text=True, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = subprocess.run([docker(), "inspect", "--format", "{{.State.Running}}", self.container_id],
                              capture_output=True, text=True, check=False)
        return proc.stdout.strip() == "true"

    def get(self, port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return None


@pytest.fixture(scope="module")
def operator_container(cluster: LocalCluster, image: str, traffic_db: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorContainer]:
    workdir = tmp_path_factory.mktemp("operator-pod")
    workdir.chmod(0o755)
    install_crds(cluster)
    cluster.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    apply(cluster, namespace_yaml(NS))
    wait_for(f"the default ServiceAccount of {NS}",
             lambda: cluster.kubectl("-n", NS, "get", "sa", "default", check=False).returncode == 0)
    metrics_port, liveness_port = free_port(), free_port()
    chart = render_chart(cluster, image, traffic_db, metrics_port, liveness_port)
    # Everything the operator's pod needs from the release; the Deployment itself is the container below.
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(chart.without("Deployment")))
    service_account = chart.one("ServiceAccount")["metadata"]["name"]

    token = cluster.kubectl("-n", NS, "create", "token", service_account, "--duration=2h").stdout.strip()
    sa_dir = workdir / "serviceaccount"
    sa_dir.mkdir(mode=0o755)
    for name, text in {"token": token, "namespace": NS,
                       "ca.crt": (cluster.state_dir / "pki" / "ca.crt").read_text()}.items():
        (sa_dir / name).write_text(text)
        (sa_dir / name).chmod(0o644)

    apply(cluster, deployment_yaml(NS, "web"))
    apply(cluster, scaler_yaml(NS, "web", "web"))
    clock = Clock.scaled_from(START, SPEED)
    api_port = urlsplit(cluster.server).port
    assert api_port is not None
    run = docker_run_for_pod(chart, workdir, service_account_dir=sa_dir, api_port=api_port,
                             pod_name=f"{RELEASE}-prescaler-0", extra_env=clock.env())
    started = subprocess.run(run, capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    op = OperatorContainer(started.stdout.strip(), metrics_port, liveness_port)
    try:
        wait_for("the operator container's /metrics",
                 lambda: op.get(metrics_port, "/metrics") is not None or not op.running(), timeout=180)
        assert op.running(), f"the operator container exited:\n{op.logs()[-6000:]}"
        yield op
    finally:
        (workdir / "operator.log").write_text(op.logs())
        subprocess.run([docker(), "rm", "--force", op.container_id], capture_output=True, check=False)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(
            [o for o in chart.without("Deployment") if "namespace" not in o["metadata"]]), check=False)


def test_operator_in_the_image_scales_a_deployment_ahead_of_its_peak(
        operator_container: OperatorContainer, cluster: LocalCluster, traffic_db: str) -> None:
    op = operator_container

    def scaled_up() -> bool:
        assert op.running(), f"the operator container exited:\n{op.logs()[-6000:]}"
        spec = get_json(cluster, "-n", NS, "get", "deployment", "web").get("spec", {})
        return int(spec.get("replicas", 0)) >= PEAK_REPLICAS

    # A liveness bound only: the scale-up is due about 50 simulated minutes (50 s) after the clock started.
    wait_for(f"the Deployment at {PEAK_REPLICAS}+ replicas", scaled_up, timeout=600, interval=0.5)

    engine = sa.create_engine(traffic_db)
    try:
        with engine.connect() as conn:
            first = conn.execute(sa.text(
                "SELECT decided_at, desired_replicas, observed_load, peak_load, reason FROM scaling_decisions "
                "WHERE namespace = :ns AND name = 'web' AND applied AND desired_replicas >= :n "
                "ORDER BY decided_at LIMIT 1"), {"ns": NS, "n": PEAK_REPLICAS}).one()
    finally:
        engine.dispose()
    # Decided from the forecast before the peak, while the load it observed was still far below it.
    assert first.decided_at < PEAK, first
    assert first.observed_load is not None and first.peak_load is not None
    assert first.observed_load < first.peak_load / 2, first
    assert first.reason.endswith("replicas"), first.reason

    scaler = get_json(cluster, "-n", NS, "get", "predictivescaler", "web")
    assert condition(scaler, "ScalingActive")["status"] == "True", scaler.get("status")
    assert scaler["status"]["desiredReplicas"] >= PEAK_REPLICAS
    events = get_json(cluster, "-n", NS, "get", "events")
    assert any(e.get("involvedObject", {}).get("kind") == "PredictiveScaler" for e in events.get("items", []))
    assert op.get(op.liveness_port, "/healthz") is not None
    metrics = op.get(op.metrics_port, "/metrics") or ""
    ups = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
           if line.startswith("prescaler_scale_actions_total{") and f'namespace="{NS}"' in line
           and 'direction="up"' in line]
    assert sum(ups) >= 1, metrics[-3000:]
    # Nothing was refused to the chart's ServiceAccount.
    assert "Forbidden" not in op.logs()
