"""A real Kubernetes control plane on loopback, run as plain processes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the upstream binaries (built by
``hack/build-components.sh``); kwok plays the kubelets of fake nodes so Deployments get pods that are
scheduled and become Ready after a configurable delay. Tests and the demo use it; nothing here talks
to the Kubernetes API except through ``kubectl`` and plain HTTPS health probes.

Every ``start()`` gives a fresh cluster: state from an earlier (possibly crashed) run is discarded and its
processes are killed first.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import dataclasses
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import yaml

from prescaler.errors import InputError, PrescalerError
from prescaler_dev import settings
from prescaler_dev.kwok import KWOK_NODE_ANNOTATION, NODE_IP, kwok_stages, node_manifest
from prescaler_dev.pki import make_pki, write_kubeconfig
from prescaler_dev.processes import alive, cmdline, listening_pids, port_in_use, proc_start_time, terminate

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)
# Start order; stop() walks it backwards so nothing loses its API server mid-flight.
PROCESS_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PORT_ROLES = {
    0: "kube-apiserver",
    1: "etcd client",
    2: "etcd peer",
    3: "kube-controller-manager",
    4: "kube-scheduler",
    5: "kwok",
}
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"  # kwok's default /24 would cap the whole cluster at 254 pods
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Controllers that only make sense with a cloud provider.
KCM_CONTROLLERS = "*,-cloud-node-lifecycle-controller,-node-route-controller,-service-lb-controller"
AUTO_PORT_RANGE = range(20000, 40000, 10)
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-components.sh"


class ClusterError(PrescalerError):
    """The local control plane could not be built, started or used."""


@dataclass
class ClusterConfig:
    state_dir: Path
    bin_dir: Path | None = None
    base_port: int | None = 16443  # None: the first free block from AUTO_PORT_RANGE
    pod_ready_delay: float = 2.0
    nodes: int = 2
    node_cpu: str = "32"
    node_memory: str = "256Gi"
    node_pods: str = "500"
    start_timeout: float = 180.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if self.bin_dir is not None:
            self.bin_dir = Path(self.bin_dir).resolve()
        if self.base_port is not None and not 1024 <= self.base_port <= 65535 - len(PORT_ROLES):
            raise InputError(f"base_port {self.base_port} must leave room for 6 ports in 1024..65535")
        if self.pod_ready_delay < 0:
            raise InputError(f"pod_ready_delay must be >= 0 seconds, got {self.pod_ready_delay}")
        if self.nodes < 1:
            raise InputError(f"nodes must be >= 1, got {self.nodes}")

    def port(self, offset: int) -> int:
        if self.base_port is None:
            raise ClusterError("the port block is chosen by start()")
        return self.base_port + offset


# --------------------------------------------------------------------------- binaries


def ensure_binaries(bin_dir: Path | None = None, echo: bool = True) -> Path:
    """Return a directory holding every component, building them with the repo's script if needed.

    The build output goes to stderr as it happens (a cold build takes many minutes) and its tail is
    part of the error when the build fails.
    """
    if bin_dir is not None:
        missing = [c for c in COMPONENTS if not os.access(bin_dir / c, os.X_OK)]
        if missing:
            raise ClusterError(f"bin_dir {bin_dir} lacks executables: {', '.join(missing)}")
        return bin_dir
    if not BUILD_SCRIPT.is_file():
        raise ClusterError(f"no bin_dir given and the build script {BUILD_SCRIPT} is not there")
    tail: collections.deque[str] = collections.deque(maxlen=80)
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        out.extend(proc.stdout)

    reader = threading.Thread(target=pump_stdout, daemon=True)
    reader.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line)
        if echo:
            sys.stderr.write(line)
    rc = proc.wait()
    reader.join()
    if rc != 0:
        raise ClusterError(f"{BUILD_SCRIPT.name} failed (exit {rc}):\n{''.join(tail)}")
    lines = [line.strip() for line in out if line.strip()]
    if not lines:
        raise ClusterError(f"{BUILD_SCRIPT.name} printed no bin dir:\n{''.join(tail)}")
    return ensure_binaries(Path(lines[-1]))


# --------------------------------------------------------------------------- state, ports, probes


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "pids.json"


def kill_recorded(state_dir: Path) -> list[str]:
    """Stop the processes a previous run recorded in ``state_dir``; returns the names it had to stop."""
    path = _pid_file(state_dir)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    pids = {name: (int(v["pid"]), v.get("start_time")) for name, v in recorded.items()}
    running = [name for name, (pid, start) in pids.items() if alive(pid, start)]
    left = terminate(pids)
    if left:
        raise ClusterError(f"could not stop earlier cluster processes: {', '.join(left)}")
    path.unlink(missing_ok=True)
    return running


def _http_ok(url: str, context: ssl.SSLContext | None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _lock_port_block(base_port: int) -> IO[str] | None:
    """Hold an advisory lock on a port block for the life of a cluster, so concurrent test sessions
    and the demo never pick the same ports. None when another live cluster holds it."""
    lock_dir = settings.cache_dir() / "port-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = (lock_dir / f"{base_port}.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1."""

    def __init__(self, config: ClusterConfig) -> None:
        # A copy: start() fills in the port block when it is chosen automatically.
        self.config = dataclasses.replace(config)
        self._auto_port = config.base_port is None
        self._port_lock: IO[str] | None = None
        self._bin_dir = config.bin_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._args: dict[str, list[str]] = {}  # each component's arguments, so one can be restarted alone
        self._logs: list[Any] = []
        self._atexit_registered = False
        self._previous_sigterm: Any = None
        self.startup_seconds: float | None = None
        self.build_seconds: float | None = None

    # ---- paths and handles

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            raise ClusterError("binaries not resolved yet: call start() first")
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.config.port(0)}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG of the admin and the built kubectl/helm first on PATH."""
        env = settings.inherited()
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        helm_home = self.state_dir / "helm"
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
        return env

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as cluster admin; raises ClusterError with its stderr when check fails."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    # ---- lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._procs:
            raise ClusterError("cluster already started")
        t0 = time.monotonic()
        self._bin_dir = ensure_binaries(self.config.bin_dir)
        self.build_seconds = time.monotonic() - t0
        t1 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        kill_recorded(self.state_dir)
        self._reserve_ports()
        for sub in ("etcd", "pki", "logs", "kcm-certs", "scheduler-certs", "helm"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        self.log_dir.mkdir()
        self._install_cleanup()
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t1
        info = {"server": self.server, "base_port": self.config.base_port, "kubeconfig": str(self.kubeconfig)}
        (self.state_dir / "cluster.json").write_text(json.dumps(info, indent=2))

    def stop(self) -> None:
        """Stop every process (SIGTERM, SIGKILL after a grace period) and check none is left."""
        procs = {name: self._procs[name] for name in reversed(PROCESS_ORDER) if name in self._procs}
        left: list[str] = []
        for name, proc in procs.items():
            left += terminate({name: (proc.pid, proc_start_time(proc.pid))})
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if not left:
            _pid_file(self.state_dir).unlink(missing_ok=True)
            (self.state_dir / "cluster.json").unlink(missing_ok=True)
        self._remove_cleanup()
        if self._port_lock is not None:
            self._port_lock.close()
            self._port_lock = None
        if self._auto_port:
            self.config.base_port = None
        if left:
            raise ClusterError(f"processes survived SIGKILL: {', '.join(left)}")

    # ---- one component: outages for fault tests

    def stop_component(self, name: str, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """Stop one component as an outage would: SIGTERM (a clean shutdown) or SIGKILL (a crash).

        SIGKILL follows after `grace` seconds: kube-apiserver stops listening at once on SIGTERM but its
        graceful termination can keep the process (and its port) for half a minute more.
        The rest of the control plane keeps running and keeps its state (etcd's data directory stays), so
        `start_component` brings back the same cluster.
        """
        if name not in PROCESS_ORDER:
            raise InputError(f"unknown component {name!r}; one of {', '.join(PROCESS_ORDER)}")
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            raise ClusterError(f"{name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def start_component(self, name: str, timeout: float = 120.0) -> None:
        """Start a stopped component with the arguments it first had; return once it and the API server
        answer their health checks."""
        if name not in self._args:
            raise ClusterError(f"{name} was never started: call start() first")
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            raise ClusterError(f"{name} is already running")
        self._spawn(name, self._args[name])
        deadline = time.monotonic() + timeout
        running = [n for n in PROCESS_ORDER if n in self._procs]
        self._wait(f"{name} health after a restart", lambda: self._healthy(name), deadline, running)
        # Nothing is usable through a restarted etcd until the API server sees it again.
        self._wait("kube-apiserver /readyz", lambda: self._healthy("kube-apiserver"), deadline, running)

    def restart_component(self, name: str, *, down_for: float = 0.0, sig: int = signal.SIGTERM) -> float:
        """Stop one component, keep it down `down_for` seconds, start it again; returns the seconds it was
        unavailable (stop to healthy)."""
        t0 = time.monotonic()
        self.stop_component(name, sig)
        time.sleep(down_for)
        self.start_component(name)
        return time.monotonic() - t0

    def _healthy(self, name: str) -> bool:
        cfg = self.config
        pki = self.state_dir / "pki"
        if name == "etcd":
            return _http_ok(f"http://127.0.0.1:{cfg.port(1)}/health", None)
        if name == "kube-apiserver":
            admin_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            admin_ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            return _http_ok(f"{self.server}/readyz", admin_ctx)
        if name == "kwok":
            return _http_ok(f"http://127.0.0.1:{cfg.port(5)}/healthz", None)
        # Their serving certificates are self-signed: the probe only asks whether they are up.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        port = cfg.port(3) if name == "kube-controller-manager" else cfg.port(4)
        return _http_ok(f"https://127.0.0.1:{port}/healthz", insecure)

    # ---- internals

    def _install_cleanup(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._stop_quietly)
            self._atexit_registered = True
        # A plain SIGTERM would end Python without running atexit or fixture teardown; make it an
        # interrupt, which pytest and ordinary programs unwind like Ctrl-C.
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None):
                self._previous_sigterm = current
                signal.signal(signal.SIGTERM, _interrupt)

    def _remove_cleanup(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._stop_quietly)
            self._atexit_registered = False
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _interrupt:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _reserve_ports(self) -> None:
        if not self._auto_port:
            assert self.config.base_port is not None
            self._port_lock = _lock_port_block(self.config.base_port)
            if self._port_lock is None:
                raise ClusterError(
                    f"ports {self.config.base_port}..{self.config.port(len(PORT_ROLES) - 1)} belong to "
                    "another running local cluster; choose another base_port"
                )
            self._free_ports()
            return
        for base in AUTO_PORT_RANGE:
            lock = _lock_port_block(base)
            if lock is None:
                continue
            if not any(port_in_use(base + off) for off in PORT_ROLES):
                self.config.base_port = base
                self._port_lock = lock
                return
            lock.close()
        raise ClusterError(f"no free block of {len(PORT_ROLES)} ports in {AUTO_PORT_RANGE}")

    def _free_ports(self, patience: float = 15.0) -> None:
        state = str(self.state_dir)
        for offset, role in PORT_ROLES.items():
            port = self.config.port(offset)
            # Processes killed a moment ago may still hold their listener while the kernel tears them down.
            deadline = time.monotonic() + patience
            while port_in_use(port):
                holders = {p: cmdline(p) for p in listening_pids(port)}
                ours = [p for p, cmd in holders.items() if state in cmd]
                # An exiting process has an empty cmdline: give it time rather than blame it.
                foreign = [p for p, cmd in holders.items() if cmd and state not in cmd]
                if ours:
                    # A leftover of this state dir whose pid file was lost: safe to reclaim.
                    terminate({f"pid {p}": (p, proc_start_time(p)) for p in ours})
                elif foreign or time.monotonic() > deadline:
                    who = ", ".join(f"pid {p} ({holders[p][:80]})" for p in foreign) or "an exiting process"
                    raise ClusterError(f"port {port} ({role}) is in use by {who}; stop it or choose another base_port")
                time.sleep(0.2)

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        self._args[name] = list(args)
        cmd = [str(self.bin_dir / name), *args]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # Parent-death signal: even a SIGKILLed test runner takes the control plane with it.
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        env = {k: v for k, v in settings.inherited().items() if not k.startswith(("KUBECONFIG", "ETCD"))}
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.state_dir,
            env=env,
            start_new_session=True,
        )
        self._procs[name] = proc
        self._record_pids()

    def _record_pids(self) -> None:
        data = {
            name: {"pid": p.pid, "start_time": proc_start_time(p.pid), "cmd": p.args}
            for name, p in self._procs.items()
        }
        tmp = _pid_file(self.state_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(_pid_file(self.state_dir))

    def _log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, watch: Sequence[str]) -> None:
        while True:
            for name in watch:
                proc = self._procs[name]
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {proc.returncode} while waiting for {what}; "
                        f"log {self.log_dir / (name + '.log')}:\n{self._log_tail(name)}"
                    )
            if check():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}:\n{self._log_tail(n, 10)}" for n in watch)
                raise ClusterError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.2)

    def _start_all(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.start_timeout
        pki = make_pki(self.state_dir / "pki", ipaddress.IPv4Network(SERVICE_CIDR)[1])
        p = pki.path
        write_kubeconfig(self.kubeconfig, self.server, pki, "prescaler-admin", "admin")
        kcm_kc = self.state_dir / "controller-manager.kubeconfig"
        sched_kc = self.state_dir / "scheduler.kubeconfig"
        write_kubeconfig(kcm_kc, self.server, pki, "system:kube-controller-manager", "controller-manager")
        write_kubeconfig(sched_kc, self.server, pki, "system:kube-scheduler", "scheduler")

        etcd_url = f"http://127.0.0.1:{cfg.port(1)}"
        peer_url = f"http://127.0.0.1:{cfg.port(2)}"
        # etcd speaks plain HTTP, reachable on loopback only; no fsync because the data is throwaway.
        self._spawn(
            "etcd",
            [
                "--name=prescaler",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=prescaler={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd health", lambda: self._healthy("etcd"), deadline, ["etcd"])

        self._spawn(
            "kube-apiserver",
            [
                "--advertise-address=127.0.0.1",
                "--bind-address=127.0.0.1",
                f"--secure-port={cfg.port(0)}",
                f"--etcd-servers={etcd_url}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--client-ca-file={p('ca.crt')}",
                f"--tls-cert-file={p('apiserver.crt')}",
                f"--tls-private-key-file={p('apiserver.key')}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p('sa.pub')}",
                f"--service-account-signing-key-file={p('sa.key')}",
                f"--cert-dir={self.state_dir / 'pki'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(
            "kube-apiserver /readyz", lambda: self._healthy("kube-apiserver"), deadline, ["etcd", "kube-apiserver"]
        )

        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cfg.port(3)}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p('sa.key')}",
                f"--root-ca-file={p('ca.crt')}",
                f"--cluster-signing-cert-file={p('ca.crt')}",
                f"--cluster-signing-key-file={p('ca.key')}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--controllers={KCM_CONTROLLERS}",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cfg.port(4)}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        all_cp = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._wait(f"{name} /healthz", functools.partial(self._healthy, name), deadline, all_cp)

        kwok_cfg = self.state_dir / "kwok.yaml"
        kwok_cfg.write_text(yaml.safe_dump_all(kwok_stages(cfg.pod_ready_delay), sort_keys=False))
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={kwok_cfg}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--server-address=127.0.0.1:{cfg.port(5)}",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
            ],
        )
        everything = [*all_cp, "kwok"]
        self._wait("kwok /healthz", lambda: self._healthy("kwok"), deadline, everything)

        nodes = [
            node_manifest(f"kwok-node-{i}", i, cfg.node_cpu, cfg.node_memory, cfg.node_pods) for i in range(cfg.nodes)
        ]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
        self._wait("nodes Ready", self._nodes_ready, deadline, everything)
        self._wait("the default ServiceAccount", self._default_sa_exists, deadline, everything)

    def _nodes_ready(self) -> bool:
        result = self.kubectl("get", "nodes", "-o", "json", check=False)
        if result.returncode != 0:
            return False
        items = json.loads(result.stdout)["items"]
        ready = [
            n
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            # The node controller removes its not-ready taint shortly after Ready; pods wait for that.
            and not any(t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints", []))
        ]
        return len(ready) >= self.config.nodes

    def _default_sa_exists(self) -> bool:
        return self.kubectl("-n", "default", "get", "serviceaccount", "default", check=False).returncode == 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- CLI


def _default_state_dir() -> Path:
    return settings.cache_dir() / "localcluster"


def _int_arg(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{flag} must be a port number or 'auto', got {value!r}") from None


def _owner_file(state_dir: Path) -> Path:
    return state_dir / "owner.json"


def down(state_dir: Path, timeout: float = 60.0) -> list[str]:
    """Stop what 'up' runs in ``state_dir``: ask its process to shut down, then kill any leftover."""
    state_dir = state_dir.resolve()
    stopped: list[str] = []
    try:
        owner = json.loads(_owner_file(state_dir).read_text())
    except (OSError, ValueError):
        owner = None
    if owner and alive(int(owner["pid"]), owner.get("start_time")):
        os.kill(int(owner["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(int(owner["pid"]), owner.get("start_time")):
            time.sleep(0.1)
        stopped.append(f"up (pid {owner['pid']})")
    _owner_file(state_dir).unlink(missing_ok=True)
    return stopped + kill_recorded(state_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prescaler_dev.localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a local control plane and keep it running until Ctrl-C/SIGTERM")
    up.add_argument("--state-dir", type=Path, default=_default_state_dir())
    up.add_argument("--pod-ready-delay", type=float, default=2.0, help="seconds from pod start to Ready")
    up.add_argument("--base-port", default="16443", help="first of 6 loopback ports, or 'auto'")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--bin-dir", type=Path, default=None)
    down_cmd = sub.add_parser("down", help="stop a cluster started by 'up' (or left over by a crash)")
    down_cmd.add_argument("--state-dir", type=Path, default=_default_state_dir())
    args = parser.parse_args(argv)
    try:
        if args.command == "down":
            stopped = down(args.state_dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
            return 0
        config = ClusterConfig(
            state_dir=args.state_dir,
            bin_dir=args.bin_dir,
            base_port=None if args.base_port == "auto" else _int_arg("--base-port", args.base_port),
            pod_ready_delay=args.pod_ready_delay,
            nodes=args.nodes,
        )
        # SIGTERM takes the same clean path as Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        cluster = LocalCluster(config)
        try:
            cluster.start()
            owner = {"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}
            _owner_file(config.state_dir).write_text(json.dumps(owner))
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            print(f"export PATH={cluster.bin_dir}:$PATH")
            print(f"# api server {cluster.server}")
            print(f"# up in {cluster.startup_seconds:.1f}s; logs in {cluster.log_dir}; Ctrl-C stops", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
            _owner_file(config.state_dir).unlink(missing_ok=True)
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
