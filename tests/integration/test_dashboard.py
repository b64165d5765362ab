"""The Grafana dashboard checked with real tools: every SQL statement is accepted by a real PostgreSQL
(EXPLAIN), every PromQL expression by promtool, Grafana's dashboard-linter passes in strict mode, and the chart
ships the dashboard as a ConfigMap (helm). The static checks and the query helpers are in the unit tier."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from unit.test_dashboard import (
    CHART,
    DASHBOARD,
    REPO,
    Query,
    dashboard_queries,
    load_dashboard,
    render_promql,
    render_sql,
    sample_window,
)

LINT_CONFIG = DASHBOARD.parent / ".lint"
LINTER_SCRIPT = REPO / "hack" / "build-dashboard-linter.sh"


@pytest.fixture(scope="module")
def queries() -> list[Query]:
    return dashboard_queries(load_dashboard())


def test_promql_parses_with_promtool(queries: list[Query], tmp_path: Path) -> None:
    """Each rendered expression as a recording rule: `promtool check rules` runs Prometheus' own parser."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package"
    window = sample_window()
    rules = [{"record": f"dashboard:q{i}", "expr": render_promql(q.text, window, q.where)}
             for i, q in enumerate(q for q in queries if q.kind == "promql")]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_sql_is_accepted_by_postgresql(queries: list[Query], engine: Engine) -> None:
    """EXPLAIN against the migrated schema catches unknown columns, types and syntax."""
    window = sample_window()
    with engine.connect() as conn:
        for q in (q for q in queries if q.kind == "sql"):
            sql = render_sql(q.text, window, q.where)
            try:
                conn.exec_driver_sql("EXPLAIN " + sql.replace("%", "%%"))
            except sa.exc.DBAPIError as exc:
                pytest.fail(f"{q.where}: PostgreSQL rejects the query: {exc.orig}\n{sql}")


def test_dashboard_linter_strict() -> None:
    """Grafana's dashboard-linter, built from its Go module (hack/build-dashboard-linter.sh), in strict mode;
    the rules that cannot apply are excluded in the `.lint` file next to the JSON, each with a reason."""
    config = yaml.safe_load(LINT_CONFIG.read_text())
    for rule, entry in config["exclusions"].items():
        assert entry.get("reason") or all(e.get("reason") for e in entry.get("entries", [])), f"{rule}: no reason"
    built = subprocess.run(["bash", str(LINTER_SCRIPT)], capture_output=True, text=True)
    assert built.returncode == 0, f"building dashboard-linter failed:\n{built.stderr[-4000:]}"
    linter = built.stdout.strip().splitlines()[-1]
    proc = subprocess.run([linter, "lint", "--strict", "--verbose", "--config", str(LINT_CONFIG), str(DASHBOARD)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _helm() -> str | None:
    import os

    if os.environ.get("HELM"):
        return os.environ["HELM"]
    found = shutil.which("helm")
    if found:
        return found
    cache_dir = Path(os.environ.get("PRESCALER_CACHE") or Path.home() / ".cache" / "prescaler")
    candidates = sorted(cache_dir.glob("bin/*/helm"))
    return str(candidates[-1]) if candidates else None


def _render_dashboard_configmap(*sets: str) -> list[dict[str, Any]]:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not built yet (hack/build-components.sh)")
    args = [helm, "template", "rel", str(CHART), "--namespace", "prescaler-system", "--kube-version", "1.33.0",
            "--show-only", "templates/dashboard-configmap.yaml"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0 and "could not find template" in proc.stderr:
        return []
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_chart_ships_the_dashboard_unchanged_with_the_sidecar_label() -> None:
    (cm,) = _render_dashboard_configmap()
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["namespace"] == "prescaler-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
    assert json.loads(cm["data"]["prescaler.json"]) == load_dashboard()


def test_chart_dashboard_values() -> None:
    (cm,) = _render_dashboard_configmap("dashboard.label=grafana.example/dashboard", "dashboard.labelValue=yes",
                                        "dashboard.namespace=monitoring",
                                        "dashboard.annotations.grafana_folder=Autoscaling")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana.example/dashboard"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Autoscaling"}
    assert _render_dashboard_configmap("dashboard.enabled=false") == []
