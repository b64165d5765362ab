#!/usr/bin/env python3
"""Regenerate the docs' generated sections: the CRD field reference and the metric lists.

    .venv/bin/python hack/update-docs.py
tests/unit/test_readme.py fails when they drift from the CRD, operator/prescaler/metrics.py or
operator/prescaler/collect/metrics.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from prescaler import metrics  # noqa: E402
from prescaler.collect import metrics as collector_metrics  # noqa: E402


def metric_table(module: ModuleType) -> str:
    """One row per name of the module's METRIC_NAMES, as scraped (counters gain `_total`), in that order."""
    by_name = {}
    for value in vars(module).values():
        if hasattr(value, "_labelnames") and hasattr(value, "_type"):
            by_name[value._name] = value
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name in module.METRIC_NAMES:
        m = by_name[name.removesuffix("_total")]
        exposed = m._name + ("_total" if m._type == "counter" else "")
        rows.append(f"| `{exposed}` | {m._type} | {', '.join(m._labelnames)} | {m._documentation} |")
    return "\n".join(rows)


def replace_section(path: Path, marker: str, body: str) -> None:
    text = path.read_text()
    new, count = re.subn(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)",
                         lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    if count != 1:
        raise SystemExit(f"{path.relative_to(ROOT)}: expected one {marker} section, found {count}")
    path.write_text(new)


def field_reference() -> str:
    """hack/render-manifests.py's table (a script, not a module: loaded by path); it needs no helm."""
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "hack" / "render-manifests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.field_reference()).strip()


def main() -> int:
    reference = field_reference()
    docs = ROOT / "docs"
    replace_section(docs / "reference.md", "crd-reference", reference)
    replace_section(docs / "metrics.md", "metrics", metric_table(metrics))
    replace_section(docs / "metrics.md", "collector-metrics", metric_table(collector_metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
