"""The operator's configuration is checked at start: every problem named on its own line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prescaler.config import ConfigError, OperatorConfig

URL = "postgresql+psycopg2://prescaler@127.0.0.1:5432/prescaler"


def _problems(environ: dict[str, str], **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        OperatorConfig.build(environ, **kwargs)  # type: ignore[arg-type]
    return err.value.problems


def test_defaults_and_environment_are_typed() -> None:
    cfg = OperatorConfig.build({"PRESCALER_DATABASE_URL": URL, "PRESCALER_FIT_TIMEOUT": "30",
                                "PRESCALER_MAX_CONCURRENT_RECONCILES": "4", "PRESCALER_LOG_LEVEL": "debug"},
                               priority=7)
    assert cfg.database_url == URL
    assert cfg.fit_timeout_s == 30.0
    assert cfg.max_concurrent_reconciles == 4
    assert cfg.log_level == "DEBUG"
    assert cfg.priority == 7
    assert set(cfg.sources) == {"default"}
    assert not cfg.clock.scaled


def test_the_flag_wins_over_the_environment() -> None:
    other = "postgresql+psycopg2://x@db:5432/other"
    assert OperatorConfig.build({"PRESCALER_DATABASE_URL": URL}, database_url=other).database_url == other


def test_every_problem_is_one_line_naming_its_setting(tmp_path: Path) -> None:
    bad_sources = tmp_path / "sources.yaml"
    bad_sources.write_text("sources: [not, a, mapping]\n")

    def no_cluster() -> None:
        raise RuntimeError("Invalid kube-config file. No configuration found.")

    problems = _problems(
        {"PRESCALER_FIT_TIMEOUT": "soon", "PRESCALER_MAX_CONCURRENT_RECONCILES": "0",
         "PRESCALER_LOG_LEVEL": "loud", "PRESCALER_CLOCK_START": "2024-01-01T00:00:00",
         "PRESCALER_CLOCK_SPEED": "-1"},
        sources_path=bad_sources, metrics_port=70000, workers=0, check_cluster=no_cluster,
    )
    expected = ["database:", "--config:", "--metrics-port:", "--workers:", "PRESCALER_FIT_TIMEOUT:",
                "PRESCALER_MAX_CONCURRENT_RECONCILES:", "PRESCALER_LOG_LEVEL:", "PRESCALER_CLOCK_SPEED:",
                "cluster credentials:"]
    assert [p.split(": ", 1)[0] + ":" for p in problems] == expected
    assert all("\n" not in p for p in problems)
    assert "PRESCALER_DATABASE_URL" in problems[0]
    assert "No configuration found" in problems[-1]


def test_a_malformed_database_url_is_named() -> None:
    assert _problems({"PRESCALER_DATABASE_URL": "not a url"})[0].startswith("database: ")


def test_prescaler_run_without_configuration_exits_2_with_one_line_each(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRESCALER_", "KUBERNETES_SERVICE", "KUBECONFIG"))}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "missing-kubeconfig"))
    proc = subprocess.run([sys.executable, "-m", "prescaler.cli", "run", "--config", str(tmp_path / "nope.yaml")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert [line.split(":", 2)[1].strip() for line in lines] == ["database", "--config", "cluster credentials"]


def test_refit_spread_is_a_share_of_the_refresh_interval() -> None:
    assert OperatorConfig.build({"PRESCALER_DATABASE_URL": URL}).refit_spread == 0.5
    assert OperatorConfig.build({"PRESCALER_DATABASE_URL": URL, "PRESCALER_REFIT_SPREAD": "0"}).refit_spread == 0.0
    for bad, words in (("1", "less than 1"), ("-0.1", "at least 0"), ("half", "not a number")):
        problems = _problems({"PRESCALER_DATABASE_URL": URL, "PRESCALER_REFIT_SPREAD": bad})
        assert len(problems) == 1 and problems[0].startswith("PRESCALER_REFIT_SPREAD: ") and words in problems[0]
