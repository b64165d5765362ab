"""spec.promotion in the CRD agrees with the operator's parser: what the CEL rules accept, parse_promotion accepts,
and what they reject it rejects naming the same field. The rules are evaluated here with Python's regular
expressions, `$` read as RE2 reads it (the end of the text, not before a final newline)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from prescaler.errors import InputError
from prescaler.promotion import parse_promotion

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "prescaler.dev_predictivescalers.yaml"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def promotion_schema() -> dict[str, Any]:
    (crd,) = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]["promotion"]


def _re2(pattern: str) -> str:
    return pattern.replace("$", r"\Z")


def cel_accepts(field: str, value: str) -> bool:
    """The field's pattern, length and CEL rules as the API server applies them to a string."""
    node = promotion_schema()["properties"][field]
    if len(value) > node["maxLength"]:
        return False
    if "pattern" in node and not re.search(_re2(node["pattern"]), value):
        return False
    return all(_eval(rule["rule"], value) for rule in node["x-kubernetes-validations"])


def _eval(rule: str, value: str) -> bool:
    """The two rule shapes the promotion fields use: regex tests, and a duration's sum in seconds."""
    if "findAll" in rule:
        if re.search("[0-9]{10,}", value):
            return False
        total = sum(int(n) * UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", value))
        bound = int(re.search(r"(>=|<=) (\d+)$", rule.strip()).group(2))  # type: ignore[union-attr]
        return total >= bound if ">=" in rule else total <= bound
    first, second = re.findall(r"self\.matches\('([^']*)'\)", rule)
    return bool(re.search(_re2(first), value)) and not re.search(_re2(second), value)


RATIOS = ["1.0", "0.5", "1", "0.0001", "123456.1234", "10", "0", "0.0", "00.000", "-1", "1e3", ".5", "5.",
          "0.00001", "1234567", " 1.0", "1.0\n", "1,0", "NaN", "inf", ""]
AFTERS = ["7d", "1h", "30d", "4w", "90m", "59m", "0d", "31d", "5w", "1h30m", "3600s", "3599s", "7 days", ""]


@pytest.mark.parametrize("field", ["maxCostRatio", "maxUnservedRatio"])
@pytest.mark.parametrize("value", RATIOS)
def test_ratio_rules_agree_with_the_operator(field: str, value: str) -> None:
    try:
        parse_promotion({field: value})
        operator = True
    except InputError as exc:
        assert f"spec.promotion.{field}" in str(exc)
        operator = False
    assert cel_accepts(field, value) == operator


@pytest.mark.parametrize("value", AFTERS)
def test_after_rules_agree_with_the_operator(value: str) -> None:
    try:
        parse_promotion({"after": value})
        operator = True
    except InputError as exc:
        assert "spec.promotion.after" in str(exc)
        operator = False
    assert cel_accepts("after", value) == operator


def test_the_defaults_are_the_parsers() -> None:
    props = promotion_schema()["properties"]
    defaults = {name: node["default"] for name, node in props.items()}
    assert parse_promotion(defaults) == parse_promotion({})
    assert all(cel_accepts(name, value) for name, value in defaults.items())
    for name in ("maxCostRatio", "maxUnservedRatio"):
        messages = [r["message"] for r in props[name]["x-kubernetes-validations"]]
        assert messages == [f'{name} must be a decimal greater than 0, such as "{defaults[name]}"']
