"""The README is a user's first contact: its two commands come first, and its generated sections match their
single sources (the CRD and metrics.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from prescaler.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README lacks the {name} section"
    return match.group(1).strip()


def test_the_two_commands_come_first() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip().startswith("make")]
    assert commands == ["make demo", "make test"]


def test_field_reference_matches_the_crd() -> None:
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "hack" / "render-manifests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _section("crd-reference") == module.field_reference().strip()


def test_metric_list_matches_metrics_module() -> None:
    listed = re.findall(r"^\| `(prescaler_[a-z_]+)`", _section("metrics"), re.M)
    assert listed == list(METRIC_NAMES)


def test_user_facing_sections_come_before_the_benchmarks() -> None:
    headers = [line for line in README.splitlines() if line.startswith("## ")]
    measured = next(i for i, h in enumerate(headers) if h.startswith("## Measured"))
    for section in ("## Install", "## The PredictiveScaler", "## Metrics", "## Grafana dashboard"):
        assert headers.index(section) < measured, f"{section} comes after the benchmark tables"
