"""spec.promotion against a real API server: its CEL rules compile within the cost budget, bad values are
rejected naming the field, defaults fill in, and `kubectl get psc` has the SCORE column."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from prescaler_dev.localcluster import LocalCluster

from .operator_support import install_crds

NS = "e2e-promotion"


def scaler(name: str, **promotion: Any) -> dict[str, Any]:
    return {
        "apiVersion": "prescaler.dev/v1alpha1", "kind": "PredictiveScaler",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10, "mode": "ForecastOnly",
                 "series": {"service": "web"}, "capacity": {"requestsPerReplica": 100}, "promotion": promotion},
    }


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> LocalCluster:
    install_crds(cluster)
    cluster.kubectl("create", "namespace", NS, check=False)
    return cluster


def create(cluster: LocalCluster, obj: dict[str, Any]) -> tuple[bool, str]:
    result = cluster.kubectl("create", "--validate=strict", "-f", "-", input=yaml.safe_dump(obj), check=False)
    return result.returncode == 0, result.stderr


@pytest.mark.parametrize(("promotion", "field", "message"), [
    ({"after": "0m"}, "spec.promotion.after", "must be at least 1h"),
    ({"after": "30m"}, "spec.promotion.after", "must be at least 1h"),
    ({"after": "31d"}, "spec.promotion.after", "must be at most 30d"),
    ({"after": "7 days"}, "spec.promotion.after", "should match"),
    ({"maxCostRatio": "0"}, "spec.promotion.maxCostRatio", "must be a decimal greater than 0"),
    ({"maxCostRatio": "-0.5"}, "spec.promotion.maxCostRatio", "must be a decimal greater than 0"),
    ({"maxUnservedRatio": "0.000"}, "spec.promotion.maxUnservedRatio", "must be a decimal greater than 0"),
    ({"maxUnservedRatio": 0.5}, "spec.promotion.maxUnservedRatio", "string"),
])
def test_bad_promotions_are_rejected_naming_the_field(crds: LocalCluster, promotion: dict[str, Any], field: str,
                                                     message: str) -> None:
    ok, err = create(crds, scaler("bad", **promotion))
    assert not ok
    assert field in err and message in err, err


def test_a_promotion_is_defaulted_and_the_score_column_shows(crds: LocalCluster) -> None:
    ok, err = create(crds, scaler("good"))
    assert ok, err
    stored = json.loads(crds.kubectl("get", "psc", "-n", NS, "good", "-o", "json").stdout)
    assert stored["spec"]["promotion"] == {"after": "7d", "maxCostRatio": "1.0", "maxUnservedRatio": "0.5"}
    # The operator's status, as a tick writes it, is accepted by the status schema and printed.
    status = {"effectiveMode": "ForecastOnly",
              "promotion": {"specMode": "ForecastOnly", "since": "2024-03-04T00:00:00Z"},
              "scorecard": {"window7d": {"coveredHours": 168, "plannedReplicaHours": "504.0",
                                         "baselineReplicaHours": "672.0", "plannedUnservedPercent": "0.010",
                                         "baselineUnservedPercent": "1.250", "costRatio": "0.75",
                                         "unservedRatio": "0.01", "baseline": "Observed"},
                            "days": 7, "summary": "cost 0.75× unserved 0.01× (7d)"}}
    patched = copy.deepcopy(stored)
    patched["status"] = status
    crds.kubectl("replace", "--subresource=status", "-f", "-", input=json.dumps(patched))
    table = crds.kubectl("get", "psc", "-n", NS, "good", "-o", "wide").stdout.splitlines()
    assert "SCORE" in table[0] and "EFFECTIVE" in table[0]
    assert "cost 0.75× unserved 0.01× (7d)" in table[1] and "ForecastOnly" in table[1]
    again = json.loads(crds.kubectl("get", "psc", "-n", NS, "good", "-o", "json").stdout)
    assert again["status"]["scorecard"] == status["scorecard"]
