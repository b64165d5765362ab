#!/usr/bin/env python3
"""Regenerate the README's generated sections: the CRD field reference and the metric list.

    .venv/bin/python hack/update-readme.py
tests/test_readme.py fails when they drift from the CRD or from operator/prescaler/metrics.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from prescaler import metrics  # noqa: E402


def metric_table() -> str:
    by_name = {}
    for value in vars(metrics).values():
        if hasattr(value, "_labelnames") and hasattr(value, "_type"):
            by_name[value._name + ("_total" if value._type == "counter" else "")] = value
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name in metrics.METRIC_NAMES:
        m = by_name[name]
        rows.append(f"| `{name}` | {m._type} | {', '.join(m._labelnames)} | {m._documentation} |")
    return "\n".join(rows)


def main() -> int:
    reference = subprocess.run(
        ["bash", str(ROOT / "hack" / "render-manifests.sh"), "--field-reference"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    readme = ROOT / "README.md"
    text = readme.read_text()
    for marker, body in (("crd-reference", reference), ("metrics", metric_table())):
        text = re.sub(rf"(<!-- {marker}:start -->\n).*?(\n<!-- {marker}:end -->)",
                      lambda m, body=body: m.group(1) + body + m.group(2), text, flags=re.S)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
