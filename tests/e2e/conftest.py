"""The real local control plane for end-to-end tests.

`cluster` is one cluster for the whole session (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok on loopback). Nothing is skipped: when the components cannot be built or the
cluster cannot start, the tests error with the build output or the component's log.
Every test collected under this folder carries the `e2e` mark.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfixtures import engine, engine_for, make_database, pg_server_url, pg_url
from prescaler_dev.localcluster import ClusterConfig, LocalCluster

__all__ = ["engine", "engine_for", "make_database", "pg_server_url", "pg_url"]

POD_READY_DELAY = 2.0
# By default each session takes the first free port block (locked while it runs), so several test
# sessions and the demo (16443) can run side by side.
_BASE_PORT_ENV = os.environ.get("PRESCALER_E2E_BASE_PORT")
BASE_PORT = int(_BASE_PORT_ENV) if _BASE_PORT_ENV else None

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        state_dir=tmp_path_factory.mktemp("localcluster"),
        base_port=BASE_PORT,
        pod_ready_delay=POD_READY_DELAY,
    )
    local = LocalCluster(config)
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def traffic_db(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A module's database holding the `peak-api` trace (daily 18:00-19:00 peak), imported with the CLI."""
    from prescaler import cli

    from .operator_support import write_trace_csv

    csv = write_trace_csv(tmp_path_factory.mktemp("trace") / "peak.csv")
    assert cli.main(["--database-url", pg_url, "import", str(csv), "--service", "peak-api"]) == 0
    return pg_url
