"""Runtime and development kit stay apart: the operator never imports `prescaler_dev` (nor `cryptography`,
which only the local cluster's PKI needs), and the wheel the image installs carries neither."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY_MODULES = ("prescaler_dev", "cryptography")

# Runs in a fresh interpreter: this test process may have imported the dev kit already (other tests do).
_IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import prescaler
names = [m.name for m in pkgutil.walk_packages(prescaler.__path__, "prescaler.")
         if m.name.rsplit(".", 1)[-1] != "__main__"]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def _is_dev_module(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in DEV_ONLY_MODULES)


def test_runtime_modules_never_import_the_dev_kit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_MODULE], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"prescaler.cli", "prescaler.db", "prescaler.handlers"} <= set(result["imported"])
    assert [m for m in result["loaded"] if _is_dev_module(m)] == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, the way the Dockerfile builds it (but with the dev kit
    present in the tree, so the exclusion rests on pyproject.toml and not only on .dockerignore)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "operator", src / "operator",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc"))
    out = tmp / "dist"
    # No build isolation: offline, with the setuptools the dev extra pins.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("prescaler-*.whl")
    return built


def test_wheel_ships_the_runtime_package_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert [n for n in names if n.startswith("prescaler_dev/")] == []
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"prescaler"}
    # Behaviour unchanged: the operator's own modules and its migrations are still there.
    assert {"prescaler/cli.py", "prescaler/db.py", "prescaler/migrations/env.py"} <= set(names)


def test_wheel_requires_cryptography_only_for_development(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
    requirements = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    runtime = [r.name.lower() for r in requirements if r.marker is None]
    assert "kopf" in runtime  # the parse found the runtime requirements
    for req in requirements:
        if req.name.lower() in DEV_ONLY_MODULES:
            assert req.marker is not None and req.marker.evaluate({"extra": "dev"}), str(req)
            assert not req.marker.evaluate({"extra": ""}), f"{req} is installed without the dev extra"
