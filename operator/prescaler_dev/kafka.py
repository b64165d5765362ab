"""A real Apache Kafka broker for tests and the demo: KRaft mode (one combined broker+controller) on loopback.

The broker's jars come from Maven Central once (`mvn dependency:copy-dependencies` on a generated pom, pinned
version) into a cache outside the repo, like the Kubernetes components; Java 17 runs it. No container engine.

    python -m prescaler_dev.kafka fetch | start [--state-dir DIR] [--port N] | stop --state-dir DIR
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prescaler_dev import settings
from prescaler_dev.processes import alive, port_in_use, proc_start_time, terminate

KAFKA_VERSION = settings.kafka_version()
LOG4J_VERSION = "2.24.3"
START_TIMEOUT_S = 90.0

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.prescaler.build</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# Broker logs go to one file at WARN; the launcher reads the socket, not the log, to know it is up.
_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d %p %c: %m%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka.server.KafkaServer
logger.kafka.level = info
"""


class KafkaError(RuntimeError):
    pass


def fetch(version: str = KAFKA_VERSION) -> Path:
    """The broker's classpath directory, downloaded once (serialised between concurrent callers)."""
    libs = settings.cache_dir() / "kafka" / f"kafka-{version}" / "libs"
    if (libs / ".complete").exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("mvn not found: install Maven (Debian package maven) to fetch the Kafka broker")
    with open(libs.parent / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / ".complete").exists():
            return libs
        with tempfile.TemporaryDirectory(dir=libs.parent) as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
            out = Path(work) / "libs"
            proc = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={out}", "-DincludeScope=runtime"],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
                raise KafkaError(f"could not fetch Kafka {version} from Maven Central:\n"
                                 f"{(proc.stdout + proc.stderr)[-3000:]}")
            (out / ".complete").write_text(version)
            if libs.exists():
                shutil.rmtree(libs)
            out.rename(libs)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _java() -> str:
    home = settings.java_home()
    java = str(home / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise KafkaError("java not found: Kafka needs a Java 17 runtime (Debian package openjdk-17-jre-headless)")
    return java


@dataclass
class KafkaBroker:
    """One KRaft broker+controller; its data survives stop/start, so a restart keeps topics and offsets."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "512m"
    # A second listener for clients that authenticate: SASL/PLAIN users, TLS from a PEM certificate and key
    # (SASL_SSL with both, SASL_PLAINTEXT or SSL with one), on `secure_port`.
    sasl_users: dict[str, str] = field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    secure_port: int = field(default_factory=free_port)
    pid: int | None = None
    _start_time: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def secure_protocol(self) -> str | None:
        tls = self.tls_cert is not None and self.tls_key is not None
        if self.sasl_users:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else None

    def _secure_settings(self) -> tuple[list[str], list[str], list[str]]:
        """(listeners, protocol map entries, properties) of the secure listener, or nothing."""
        protocol = self.secure_protocol
        if protocol is None:
            return [], [], []
        props = []
        if self.tls_cert is not None and self.tls_key is not None:
            pem = self.state_dir / "secure-keystore.pem"  # Kafka reads the key and its chain from one PEM file
            pem.write_text(self.tls_key.read_text() + self.tls_cert.read_text())
            props += ["listener.name.secure.ssl.keystore.type=PEM", f"listener.name.secure.ssl.keystore.location={pem}"]
        if self.sasl_users:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            props += ["listener.name.secure.sasl.enabled.mechanisms=PLAIN",
                      "listener.name.secure.plain.sasl.jaas.config="
                      f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"]
        return [f"SECURE://127.0.0.1:{self.secure_port}"], [f"SECURE:{protocol}"], props

    @property
    def log_path(self) -> Path:
        return self.state_dir / "broker.log"

    def _write_config(self) -> Path:
        data = self.state_dir / "data"
        props = self.state_dir / "server.properties"
        secure, secure_map, secure_props = self._secure_settings()
        listeners = ",".join([f"PLAINTEXT://127.0.0.1:{self.port}", *secure])
        protocols = ",".join(["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT", *secure_map])
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners={listeners},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={listeners}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={protocols}",
            *secure_props,
            f"log.dirs={data}",
            "num.partitions=2",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "",
        ]))
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2.format(path=self.log_path))
        return props

    def _command(self, libs: Path, main: str, *args: str) -> list[str]:
        return [_java(), f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
                "-cp", f"{libs}/*", main, *args]

    def start(self, timeout: float = START_TIMEOUT_S) -> KafkaBroker:
        libs = fetch()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for p in (self.port, self.controller_port, *([self.secure_port] if self.secure_protocol else [])):
            if port_in_use(p):
                raise KafkaError(f"port {p} is already in use")
        props = self._write_config()
        if not (self.state_dir / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                self._command(libs, "kafka.tools.StorageTool", "format", "--standalone", "-t",
                              _cluster_id(), "-c", str(props)),
                capture_output=True, text=True, check=False,
            )
            if fmt.returncode != 0:
                raise KafkaError(f"kafka storage format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
        out = (self.state_dir / "broker.out").open("ab")
        proc = subprocess.Popen(self._command(libs, "kafka.Kafka", str(props)), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.pid, self._start_time = proc.pid, proc_start_time(proc.pid)
        (self.state_dir / "broker.json").write_text(json.dumps(
            {"pid": self.pid, "start_time": self._start_time, "port": self.port,
             "controller_port": self.controller_port}))
        deadline = time.monotonic() + timeout
        while not self.ready():
            if proc.poll() is not None:
                raise KafkaError(f"Kafka exited with {proc.returncode}; log:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise KafkaError(f"Kafka not ready after {timeout:.0f}s; log:\n{self.tail()}")
            time.sleep(0.5)
        return self

    def ready(self) -> bool:
        """The broker answers a metadata request (the listener alone opens before the controller is up)."""
        if not port_in_use(self.port):
            return False
        try:
            md = self.admin().list_topics(timeout=2)
        except Exception:
            return False
        return bool(md.brokers)

    def admin(self) -> Any:
        """An admin client; keep a reference while its futures are pending (they fail once it is freed)."""
        from confluent_kafka.admin import AdminClient

        # librdkafka logs every refused connection to stderr; the launcher reports failures itself.
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def alive(self) -> bool:
        return self.pid is not None and alive(self.pid, self._start_time)

    def stop(self, grace: float = 30.0) -> None:
        if self.pid is not None:
            left = terminate({"kafka": (self.pid, self._start_time)}, grace=grace)
            if left:
                raise KafkaError(f"Kafka (pid {self.pid}) did not stop")
        self.pid = None

    def kill(self) -> None:
        if self.pid is not None and self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            while self.alive():
                time.sleep(0.05)
        self.pid = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_topic(self, name: str, partitions: int = 2, retention_ms: int | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        config = {"retention.ms": str(retention_ms)} if retention_ms is not None else {}
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)])
        for f in futures.values():
            f.result(timeout=30)

    def tail(self, chars: int = 4000) -> str:
        parts = []
        for p in (self.state_dir / "broker.out", self.log_path):
            if p.exists():
                parts.append(p.read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_id() -> str:
    # KRaft wants a base64 UUID of 22 characters (what `kafka-storage random-uuid` prints). Like Kafka's own
    # Uuid.randomUuid(), never one that starts with '-': the storage tool would read it as an option.
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prescaler_dev.kafka", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the broker's jars into the cache")
    s = sub.add_parser("start", help="start a broker and print its bootstrap address")
    s.add_argument("--state-dir", type=Path, default=settings.cache_dir() / "kafka" / "state")
    s.add_argument("--port", type=int, default=0)
    t = sub.add_parser("stop", help="stop the broker started with --state-dir")
    t.add_argument("--state-dir", type=Path, default=settings.cache_dir() / "kafka" / "state")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(fetch())
        elif args.cmd == "start":
            broker = KafkaBroker(args.state_dir, **({"port": args.port} if args.port else {})).start()
            print(broker.bootstrap)
        else:
            info = json.loads((args.state_dir / "broker.json").read_text())
            if terminate({"kafka": (info["pid"], info["start_time"])}, grace=30):
                raise KafkaError(f"Kafka (pid {info['pid']}) did not stop")
    except (KafkaError, OSError) as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
