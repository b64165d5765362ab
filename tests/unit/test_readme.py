"""The README is a user's first contact: its two commands come first, it stays short, and every link in it and
in docs/ leads somewhere. The docs' generated sections match their single sources (the CRD, metrics.py,
collect/metrics.py) and the command-line page lists every option the parser has."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from prescaler.cli import build_parser
from prescaler.collect import metrics as collector_metrics
from prescaler.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _section(page: Path, name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", page.read_text(), re.S)
    assert match, f"{page.relative_to(ROOT)} lacks the {name} section"
    return match.group(1).strip()


def _prose(text: str) -> str:
    """The page without its fenced code blocks, where `#` starts a comment, not a heading."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_the_two_commands_come_first() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip().startswith("make")]
    assert commands == ["make demo", "make test"]


def test_the_readme_stays_a_readme() -> None:
    """Measurements, references and internals have their pages in docs/; the README points to them."""
    assert len(README.splitlines()) <= 300


def test_the_readme_contents_list_its_sections() -> None:
    sections = [h for h in re.findall(r"^## (.+)$", _prose(README), re.M) if h != "Contents"]
    contents = re.search(r"^## Contents\n(.*?)\n\n", README, re.S | re.M)
    assert contents, "the README has no Contents list"
    listed = re.findall(r"\]\(#([^)]+)\)", contents.group(1))
    assert listed == [re.sub(r"[^\w\- ]", "", s.lower()).replace(" ", "-") for s in sections]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`\n]*`", "", _prose(page.read_text()))):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to nothing: {', '.join(broken)}"


def test_field_reference_matches_the_crd() -> None:
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "hack" / "render-manifests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _section(DOCS / "reference.md", "crd-reference") == module.field_reference().strip()


def test_metric_list_matches_metrics_module() -> None:
    listed = re.findall(r"^\| `(prescaler_[a-z_]+)`", _section(DOCS / "metrics.md", "metrics"), re.M)
    assert listed == list(METRIC_NAMES)


def test_collector_metric_list_matches_its_module() -> None:
    listed = re.findall(r"^\| `(prescaler_[a-z_]+)`", _section(DOCS / "metrics.md", "collector-metrics"), re.M)
    exposed = [f.name + ("_total" if f.type == "counter" else "") for f in collector_metrics.REGISTRY.collect()]
    assert sorted(listed) == sorted(exposed)
    assert [n.removesuffix("_total") for n in listed] == list(collector_metrics.METRIC_NAMES)


def _help(*command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return out.getvalue()


def _commands(*prefix: str) -> list[tuple[str, ...]]:
    """Every leaf command, from the `{a,b,...}` choices each level's help shows."""
    choices = re.search(r"^ *\{([a-z,-]+)\}", _help(*prefix), re.M)
    if choices is None:
        return [prefix]
    return [leaf for name in choices.group(1).split(",") for leaf in _commands(*prefix, name)]


def test_every_command_and_option_is_on_the_cli_page() -> None:
    page = (DOCS / "cli.md").read_text()
    missing = []
    for command in _commands():
        heading = f"## `prescaler {' '.join(command)}`"
        if heading not in page:
            missing.append(heading)
            continue
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", _help(*command))) - {"--help"}
        missing += [f"prescaler {' '.join(command)} {o}" for o in sorted(options) if o not in section]
    assert not missing, "docs/cli.md lacks " + ", ".join(missing)
