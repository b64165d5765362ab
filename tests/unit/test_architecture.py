"""docs/architecture.md lists every module of `prescaler` and `prescaler_dev`, and only modules that exist, each
with what it imports. A newcomer trusts that page before reading the code, so it must fail here first.

Pure: reads the page and parses the sources, imports nothing of the package.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "operator"
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("prescaler", "prescaler_dev")


def _dotted(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    """Every importable name of both packages (packages included) and its file."""
    return {_dotted(p): p for package in PACKAGES for p in (SOURCE / package).rglob("*.py")}


def _documented_modules() -> set[str]:
    """Modules the page must list: package `__init__` files and migration versions are not modules of a stage."""
    return {name for name, path in _sources().items()
            if path.name != "__init__.py" and "versions" not in path.relative_to(SOURCE).parts}


def _imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules of both packages, third-party top-level names) that `path` imports anywhere in its body.

    `from X import y` counts X.y when that is a module, else X: a name taken from a package is an import of the
    package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] in PACKAGES else theirs).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] not in PACKAGES:
                theirs.add(module)
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                ours.add(sub if sub in known else module)
    ours.discard(name)
    third = {t.split(".")[0] for t in theirs} - set(sys.stdlib_module_names) - {"__future__"}
    return ours, third


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def _rows() -> dict[str, tuple[set[str], set[str]]]:
    """Module name → (package imports as written, third-party imports) from every table headed `module`."""
    rows: dict[str, tuple[set[str], set[str]]] = {}
    in_table = False
    for line in PAGE.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if cells[0] == "module":
            in_table = True
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        module = cells[0].strip("`")
        assert module not in rows, f"docs/architecture.md lists {module} twice"
        rows[module] = (_names(cells[2]), _names(cells[3]))
    return rows


def _full(name: str) -> str:
    """Imports are written relative to `prescaler` unless they name a package in full."""
    return name if name.split(".")[0] in PACKAGES else f"prescaler.{name}"


def test_every_module_is_on_the_page() -> None:
    missing = sorted(_documented_modules() - set(_rows()))
    assert not missing, f"docs/architecture.md lacks a row for {', '.join(missing)}"


def test_the_page_names_only_modules_that_exist() -> None:
    known = _sources()
    rows = _rows()
    listed_but_gone = sorted(set(rows) - _documented_modules())
    assert not listed_but_gone, f"docs/architecture.md has rows for no module: {', '.join(listed_but_gone)}"
    named = {_full(n) for imports, _ in rows.values() for n in imports}
    unknown = sorted(named - set(known))
    assert not unknown, f"docs/architecture.md's import columns name no module: {', '.join(unknown)}"


def test_import_columns_match_the_code() -> None:
    known = _sources()
    wrong = []
    for module, (written, third) in sorted(_rows().items()):
        if module not in known:
            continue  # reported by the test above
        ours, theirs = _imports(module, known[module], known)
        relative = module.startswith("prescaler.")
        expected = {n.removeprefix("prescaler.") if relative else n for n in ours}
        if {n.removeprefix("prescaler.") if relative else n for n in written} != expected or third != theirs:
            wrong.append(f"{module}: " + ", ".join(f"`{n}`" for n in sorted(expected)) + " | "
                         + ", ".join(f"`{n}`" for n in sorted(theirs)))
    assert not wrong, "docs/architecture.md's import columns differ from the code; they should read:\n" + \
        "\n".join(wrong)


def test_the_parser_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """The import parser itself: imports inside functions count, relative ones resolve, names from a package
    count as the package, submodules as themselves."""
    pkg = tmp_path / "prescaler" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("")
    code = ("from __future__ import annotations\nimport os\nfrom . import a\nfrom .. import sub\n"
            "from prescaler.sub import thing\n\ndef f():\n    import numpy.linalg\n    from pandas import Series\n")
    (pkg / "b.py").write_text(code)
    known = {"prescaler.sub": pkg / "__init__.py", "prescaler.sub.a": pkg / "a.py", "prescaler.sub.b": pkg / "b.py"}
    assert _imports("prescaler.sub.b", pkg / "b.py", known) == ({"prescaler.sub.a", "prescaler.sub"},
                                                                 {"numpy", "pandas"})
