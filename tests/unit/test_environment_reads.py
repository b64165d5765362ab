"""Only the config modules read the environment: every other module of the runtime package (and of the dev kit,
beside its own settings module) gets its values passed in, so each variable is declared, typed and documented
in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
READERS = {"environ", "environb", "getenv", "getenvb"}
# `prescaler.config.environment()` hands the config modules the process environment; nobody else may call it.
GATEWAY = "environment"
ALLOWED = {
    "prescaler": {"prescaler/config.py", "prescaler/collect/config.py"},
    "prescaler_dev": {"prescaler_dev/settings.py"},
}


def environment_reads(source: str) -> list[int]:
    """Lines that touch the process environment: `os.environ`, `os.getenv`, `from os import environ`, ..."""
    def reads(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr in READERS | {GATEWAY}
        if isinstance(node, ast.ImportFrom):
            return any((a.name in READERS and node.module in ("os", "posix")) or a.name == GATEWAY
                       for a in node.names)
        return False

    return [node.lineno for node in ast.walk(ast.parse(source)) if reads(node)]


@pytest.mark.parametrize("source", [
    "import os\nx = os.environ.get('A')\n",
    "import os\nx = os.environ['A']\n",
    "import os\nx = os.getenv('A')\n",
    "import os as o\nx = dict(o.environ)\n",
    "from os import environ\n",
    "from os import getenv as g\n",
    "from prescaler.config import environment\n",
    "from prescaler import config\nx = config.environment()\n",
])
def test_the_scan_sees_each_way_of_reading(source: str) -> None:
    assert environment_reads(source)


def test_the_scan_leaves_other_code_alone() -> None:
    assert environment_reads("import os\np = os.path.join('a', 'b')\nenv = {'A': '1'}\n") == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_only_the_config_modules_read_the_environment(package: str) -> None:
    found = {}
    for path in sorted((OPERATOR / package).rglob("*.py")):
        name = path.relative_to(OPERATOR).as_posix()
        lines = environment_reads(path.read_text())
        if lines and name not in ALLOWED[package]:
            found[name] = lines
    assert found == {}, "read the setting in the config module and pass the value in"


@pytest.mark.parametrize("module", sorted(m for allowed in ALLOWED.values() for m in allowed))
def test_the_config_modules_are_where_the_reads_are(module: str) -> None:
    assert environment_reads((OPERATOR / module).read_text())
