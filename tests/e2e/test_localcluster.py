"""The local control plane acts like a real cluster: scheduling, delayed readiness, /scale, RBAC, stop."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prescaler_dev.kwok import KWOK_COMPLETE_LABEL, KWOK_NODE_ANNOTATION
from prescaler_dev.localcluster import PORT_ROLES, ClusterConfig, LocalCluster
from waiting import wait_for

from .conftest import POD_READY_DELAY

pytestmark = pytest.mark.e2e

# Kubernetes timestamps have whole-second resolution; this absorbs rounding, never a missing delay.
TOLERANCE = 0.5
# Guards against a hang only; nothing here asserts how fast the cluster is.
PATIENCE = 180.0


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return None


def _is_ready(obj: dict[str, Any]) -> bool:
    cond = _condition(obj, "Ready")
    return cond is not None and cond["status"] == "True"


def _get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _deployment(name: str, replicas: int) -> str:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            # Never pulled: kwok plays the kubelet.
                            "image": "registry.invalid/prescaler-e2e:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }
    return json.dumps(manifest)


def _namespace(cluster: LocalCluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin rejects pods until the namespace's default SA exists.
    wait_for(
        f"default ServiceAccount in {name}",
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        timeout=PATIENCE,
    )
    return name


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and _pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_nodes_ready_with_configured_capacity(cluster: LocalCluster) -> None:
    nodes = _get(cluster, "nodes")["items"]
    assert len(nodes) == cluster.config.nodes
    for node in nodes:
        assert _is_ready(node), node["status"].get("conditions")
        assert node["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
        alloc = node["status"]["allocatable"]
        assert (alloc["cpu"], alloc["memory"], alloc["pods"]) == (
            cluster.config.node_cpu,
            cluster.config.node_memory,
            cluster.config.node_pods,
        )
    # The env points at the built tools and the real API server of the pinned version.
    assert shutil.which("kubectl", path=cluster.env()["PATH"]) == str(cluster.bin_dir / "kubectl")
    assert shutil.which("helm", path=cluster.env()["PATH"]) == str(cluster.bin_dir / "helm")
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.33.13"


def test_pods_become_ready_only_after_the_delay(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "e2e-ready")
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_deployment("web", 3))
    kwok_nodes = {n["metadata"]["name"] for n in _get(cluster, "nodes")["items"]}

    running_unready: set[str] = set()

    def all_ready() -> list[dict[str, Any]] | None:
        pods = _get(cluster, "-n", ns, "pods", "-l", "app=web")["items"]
        for pod in pods:
            if pod["status"].get("podIP") and not _is_ready(pod):
                running_unready.add(pod["metadata"]["name"])
        ready = [p for p in pods if _is_ready(p)]
        return ready if len(ready) == 3 else None

    pods = wait_for("3 ready pods", all_ready, timeout=PATIENCE)
    for pod in pods:
        assert pod["spec"]["nodeName"] in kwok_nodes
        assert pod["status"]["phase"] == "Running"
        created = _ts(pod["metadata"]["creationTimestamp"])
        ready_cond = _condition(pod, "Ready")
        assert ready_cond is not None
        gap = (_ts(ready_cond["lastTransitionTime"]) - created).total_seconds()
        assert gap >= POD_READY_DELAY - TOLERANCE, f"{pod['metadata']['name']} ready {gap}s after creation"
    # The pods were seen running yet not ready: the delay is a real window, not just late reporting.
    assert running_unready
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/web", f"--timeout={int(PATIENCE)}s")


def test_scale_subresource(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "e2e-scale")
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=_deployment("api", 1))
    scale_path = f"/apis/apps/v1/namespaces/{ns}/deployments/api/scale"

    def ready_replicas() -> int:
        return int(_get(cluster, "-n", ns, "deployment", "api")["status"].get("readyReplicas") or 0)

    def pod_count() -> int:
        return len(_get(cluster, "-n", ns, "pods", "-l", "app=api")["items"])

    cluster.kubectl("-n", ns, "scale", "deployment/api", "--replicas=4")
    scale = json.loads(cluster.kubectl("get", "--raw", scale_path).stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4
    wait_for("4 ready replicas", lambda: ready_replicas() == 4, timeout=PATIENCE)

    # The way the operator actuates: a merge patch on the /scale subresource.
    cluster.kubectl(
        "-n",
        ns,
        "patch",
        "deployment",
        "api",
        "--subresource=scale",
        "--type=merge",
        "-p",
        '{"spec":{"replicas":1}}',
    )
    # Scale-down really removes pods (kwok completes the deletion a kubelet would confirm).
    wait_for("1 pod left", lambda: pod_count() == 1 and ready_replicas() == 1, timeout=PATIENCE)
    scale = json.loads(cluster.kubectl("get", "--raw", scale_path).stdout)
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["replicas"] == 1


def test_labelled_pod_runs_to_completion(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "e2e-complete")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "once", "labels": {KWOK_COMPLETE_LABEL: "true"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.invalid/once:1"}]},
    }
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(pod))
    done = wait_for(
        "pod Succeeded",
        lambda: (p := _get(cluster, "-n", ns, "pod", "once"))["status"].get("phase") == "Succeeded" and p,
        timeout=PATIENCE,
    )
    [status] = done["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert not _is_ready(done)


def test_rbac_is_enforced(cluster: LocalCluster) -> None:
    ns = _namespace(cluster, "e2e-rbac")
    cluster.kubectl("-n", ns, "create", "serviceaccount", "nobody")
    who = f"system:serviceaccount:{ns}:nobody"

    denied = cluster.kubectl("-n", ns, "auth", "can-i", "list", "pods", f"--as={who}", check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    forbidden = cluster.kubectl("-n", ns, "get", "pods", f"--as={who}", check=False)
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower()

    cluster.kubectl(
        "-n",
        ns,
        "create",
        "rolebinding",
        "nobody-view",
        "--clusterrole=view",
        f"--serviceaccount={ns}:nobody",
    )
    allowed = cluster.kubectl("-n", ns, "auth", "can-i", "list", "pods", f"--as={who}", check=False)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "yes")
    # The binding is namespaced: other namespaces stay closed.
    elsewhere = cluster.kubectl("-n", "default", "auth", "can-i", "list", "pods", f"--as={who}", check=False)
    assert elsewhere.stdout.strip() == "no"


def _start_up_process(state_dir: Path, bin_dir: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prescaler_dev.localcluster",
            "up",
            "--state-dir",
            str(state_dir),
            "--base-port",
            "auto",
            "--bin-dir",
            str(bin_dir),
            "--nodes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first.startswith("export KUBECONFIG="):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"'up' did not come up: {first!r}\n{err}")
    assert Path(first.split("=", 1)[1].strip()) == state_dir / "admin.kubeconfig"
    return proc, int(json.loads((state_dir / "cluster.json").read_text())["base_port"])


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    return {name: int(v["pid"]) for name, v in json.loads((state_dir / "pids.json").read_text()).items()}


def _assert_nothing_left(state_dir: Path, base_port: int) -> None:
    assert _processes_mentioning(str(state_dir)) == []
    busy = [base_port + off for off in PORT_ROLES if not _port_free(base_port + off)]
    assert busy == []


def test_restart_after_crash_then_stop_leaves_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    state_dir = tmp_path / "crashed"
    crashed, base_port = _start_up_process(state_dir, cluster.bin_dir)
    old = _recorded_pids(state_dir)
    assert set(old) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    crashed.send_signal(signal.SIGKILL)  # no chance to clean up
    crashed.wait()

    again = LocalCluster(ClusterConfig(state_dir=state_dir, base_port=base_port, bin_dir=cluster.bin_dir, nodes=1))
    again.start()
    try:
        assert not any(_pid_alive(pid) for pid in old.values())
        nodes = _get(again, "nodes")["items"]
        assert [_is_ready(n) for n in nodes] == [True]
        new = again.pids()
        assert all(_pid_alive(pid) for pid in new.values())
    finally:
        again.stop()
    assert not any(_pid_alive(pid) for pid in new.values())
    _assert_nothing_left(state_dir, base_port)


def test_down_stops_a_running_up(cluster: LocalCluster, tmp_path: Path) -> None:
    state_dir = tmp_path / "updown"
    up, base_port = _start_up_process(state_dir, cluster.bin_dir)
    pids = _recorded_pids(state_dir)
    down = subprocess.run(
        [sys.executable, "-m", "prescaler_dev.localcluster", "down", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert up.wait(timeout=PATIENCE) == 0
    assert not any(_pid_alive(pid) for pid in pids.values())
    _assert_nothing_left(state_dir, base_port)
