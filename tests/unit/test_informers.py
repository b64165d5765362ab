"""The informer cache: a LIST replaces it, watch events keep it, lookups go by the key an object is filed under.
(Against a real API server: the e2e tests, where every tick reads its target, HPAs and rivals from these.)"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from prescaler.informers import Informer, InformerGroup, namespace_filter, plain_names


@dataclass
class Response:
    data: bytes
    status: int = 200


def _obj(namespace: str, name: str, target: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": version},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": target}}}


def _by_target(obj: Mapping[str, Any]) -> tuple[Hashable, str]:
    meta, ref = obj["metadata"], obj["spec"]["scaleTargetRef"]
    return (meta["namespace"], ref["kind"], ref["name"]), meta["name"]


def _informer(items: list[dict[str, Any]], **kw: Any) -> Informer[str]:
    def call(**kwargs: Any) -> Response:
        assert "watch" not in kwargs, "only the LIST is exercised here"
        return Response(json.dumps({"metadata": {"resourceVersion": "7"}, "items": items}).encode())

    return Informer("hpas", call, _by_target, **kw)


def test_a_list_fills_the_cache_and_marks_it_synced() -> None:
    inf = _informer([_obj("shop", "a", "web"), _obj("shop", "b", "web"), _obj("blog", "c", "web")])
    assert not inf.synced.is_set()
    assert inf.relist() == "7"
    assert inf.synced.is_set()
    assert sorted(inf.find(("shop", "Deployment", "web"))) == ["a", "b"]
    assert inf.find(("blog", "Deployment", "web")) == ["c"]
    assert inf.find(("shop", "Deployment", "api")) == []


def test_watch_events_add_move_and_delete() -> None:
    inf = _informer([_obj("shop", "a", "web")])
    inf.relist()
    assert inf.apply({"type": "ADDED", "object": _obj("shop", "b", "api", "8")}) == "8"
    assert inf.find(("shop", "Deployment", "api")) == ["b"]
    # A changed target files the object under its new key and nowhere else.
    inf.apply({"type": "MODIFIED", "object": _obj("shop", "a", "api", "9")})
    assert inf.find(("shop", "Deployment", "web")) == []
    assert sorted(inf.find(("shop", "Deployment", "api"))) == ["a", "b"]
    inf.apply({"type": "DELETED", "object": _obj("shop", "b", "api", "10")})
    assert inf.find(("shop", "Deployment", "api")) == ["a"]
    assert inf.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}}) == "11"
    assert len(inf) == 1


def test_an_expired_watch_asks_for_a_new_list() -> None:
    from prescaler.informers import _Expired

    inf = _informer([])
    with pytest.raises(_Expired):
        inf.apply({"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}})


def test_other_namespaces_and_odd_objects_are_left_out() -> None:
    odd = {"metadata": {"namespace": "shop", "name": "odd"}, "spec": {}}
    inf = _informer([_obj("shop", "a", "web"), _obj("blog", "c", "web"), odd],
                    namespaces=namespace_filter(("shop", "fleet-*")))
    inf.relist()
    assert inf.find(("shop", "Deployment", "web")) == ["a"]
    assert inf.find(("blog", "Deployment", "web")) == []
    inf.apply({"type": "ADDED", "object": _obj("fleet-07", "f", "web")})
    assert inf.find(("fleet-07", "Deployment", "web")) == ["f"]
    assert len(inf) == 2


def test_plain_namespace_names_are_listed_one_by_one_and_globs_cluster_wide() -> None:
    assert plain_names(("shop", "fleet")) == ("shop", "fleet")
    assert plain_names(("shop", "fleet-*")) is None
    assert plain_names(()) is None


def test_a_group_of_namespaced_informers_looks_up_as_one() -> None:
    shop = _informer([_obj("shop", "a", "web")])
    fleet = _informer([_obj("fleet", "b", "web"), _obj("fleet", "c", "api")])
    group = InformerGroup([shop, fleet])
    assert not group.synced.is_set()
    shop.relist()
    assert not group.synced.is_set()  # every namespace must have been listed
    fleet.relist()
    assert group.synced.is_set()
    assert len(group) == 3
    assert group.find(("fleet", "Deployment", "web")) == ["b"]
    assert sorted(ident for ident, _ in group.items()) == [("fleet", "b"), ("fleet", "c"), ("shop", "a")]
