"""docs/settings.md is the settings tables rendered (hack/settings-doc.py), and the chart sets the variables the
table says it sets, in the processes that read them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from prescaler import config
from prescaler_dev import settings as dev

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "charts" / "prescaler" / "templates"
# The chart's workload templates and the process each one runs.
WORKLOADS = {"deployment.yaml": config.OPERATOR, "collector-deployment.yaml": config.COLLECTOR,
             "maintain-cronjob.yaml": config.COMMANDS}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "hack" / "settings-doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_the_tables_rendered() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == generator().render(), "docs/settings.md drifted from the settings tables: run hack/settings-doc.py"


def test_the_page_has_a_row_for_every_setting_and_says_what_the_refit_spread_does() -> None:
    page = generator().render()
    for name in [s.name for s in config.SETTINGS] + [s.name for s in dev.SETTINGS]:
        assert len(re.findall(rf"^\| `{name}` \|", page, flags=re.M)) == 1, name
    row = next(line for line in page.splitlines() if line.startswith("| `PRESCALER_REFIT_SPREAD`"))
    assert "refreshInterval" in row and "| 0.5 |" in row


def test_a_check_run_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = generator()
    stale = tmp_path / "settings.md"
    stale.write_text(module.render().replace("PRESCALER_REFIT_SPREAD", "PRESCALER_REFIT_SPRED"))
    monkeypatch.setattr(module, "PAGE", stale)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0 and module.main(["--check"]) == 0


def chart_env(template: str) -> set[str]:
    """Names of the environment variables a workload template sets on its container."""
    return set(re.findall(r"^\s*- name: ([A-Z][A-Z0-9_]*)\s*$", (TEMPLATES / template).read_text(), flags=re.M))


def test_the_chart_sets_what_the_table_says_where_it_is_read() -> None:
    by_name = {s.name: s for s in config.SETTINGS}
    for template, process in WORKLOADS.items():
        env = chart_env(template)
        for name in sorted(env & set(by_name)):
            s = by_name[name]
            # The chart also gives the operator POD_NAME, which its own code does not read.
            if process in s.read_by:
                assert s.chart, f"{template} sets {name}, but the table says the chart leaves it to extraEnv"
        for s in config.SETTINGS:
            if s.chart and process in s.read_by:
                assert s.name in env, f"the table says the chart sets {s.name}, but {template} does not"
        assert {n for n in env if n.startswith("PRESCALER_")} <= set(by_name), template
