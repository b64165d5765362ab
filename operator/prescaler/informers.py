"""Informers: the operator's caches of the cluster objects a tick looks up — a LIST, then a WATCH from its
resourceVersion (and a LIST again when the watch expires) — each kind in a thread of its own.

They replace kopf indexes. kopf holds every handler until each object of every indexed kind has passed a
readiness toggle, and each new toggle wakes every worker already waiting: with 1,000 Deployments and 1,000
PredictiveScalers, an operator start spent its first minute of CPU on those wake-ups before any tick ran
(bench/fleet.py with py-spy). Here readiness is one event per kind, set when its LIST is in memory; objects
are parsed as plain JSON and only the few fields a tick needs are kept.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("prescaler.informers")

V = TypeVar("V")
ObjectKey = tuple[str, str]  # (namespace, name)
# From one object: the key it is looked up by (e.g. its scale target) and what a tick needs of it.
Extract = Callable[[Mapping[str, Any]], tuple[Hashable, V]]


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def namespace_filter(patterns: Iterable[str]) -> Callable[[str], bool]:
    """The operator's namespaces (names or kopf-style globs); none means every namespace."""
    chosen = tuple(patterns)
    if not chosen:
        return lambda namespace: True
    return lambda namespace: any(fnmatch.fnmatchcase(namespace, p) for p in chosen)


class Informer(Generic[V]):
    """The latest of every object of one kind, found by the key `extract` gives it.

    `call` is a kubernetes client list function (cluster-wide) taking `watch`, `resource_version`,
    `allow_watch_bookmarks`, `timeout_seconds` and `_preload_content`.
    """

    def __init__(self, kind: str, call: Callable[..., Any], extract: Extract[V], *,
                 namespaces: Callable[[str], bool] | None = None, watch_timeout_s: int = 300) -> None:
        self.kind = kind
        self._call = call
        self._extract = extract
        self._namespaces = namespaces or namespace_filter(())
        self._watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._objects: dict[ObjectKey, tuple[Hashable, V]] = {}
        self._by_key: dict[Hashable, dict[ObjectKey, V]] = {}
        self.synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None

    def find(self, key: Hashable) -> list[V]:
        """Every object filed under `key` (e.g. all HPAs that target one Deployment)."""
        with self._lock:
            return list(self._by_key.get(key, {}).values())

    def items(self) -> list[tuple[ObjectKey, V]]:
        """Every object's (namespace, name) and value."""
        with self._lock:
            return [(ident, value) for ident, (_, value) in self._objects.items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception as exc:  # a response closed under the reader: nothing left to release
                log.debug("%s informer: closing its watch: %s", self.kind, exc)

    # --- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                version = self.relist()
                delay = 1.0
                while not self._stopping.is_set():
                    version = self._watch(version)
            except _Expired:
                continue
            except Exception as exc:  # the API server away or refusing: keep what we have, list again later
                if self._stopping.is_set():
                    return
                log.warning("%s informer: %s: %s; listing again in %.0fs", self.kind, type(exc).__name__,
                            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "", delay)
                self._stopping.wait(delay)
                delay = min(2 * delay, 30.0)

    def relist(self) -> str:
        """Replace the cache by one LIST; returns its resourceVersion (public for tests)."""
        response = self._call(_preload_content=False, _request_timeout=120)
        _check(response)
        data = json.loads(response.data)
        objects: dict[ObjectKey, tuple[Hashable, V]] = {}
        for obj in data.get("items") or []:
            entry = self._entry(obj)
            if entry is not None:
                objects[entry[0]] = entry[1]
        by_key: dict[Hashable, dict[ObjectKey, V]] = {}
        for ident, (key, value) in objects.items():
            by_key.setdefault(key, {})[ident] = value
        with self._lock:
            self._objects, self._by_key = objects, by_key
        self.synced.set()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Apply watch events until the server ends the watch; returns the newest resourceVersion seen."""
        response = self._call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                              timeout_seconds=self._watch_timeout_s, _preload_content=False,
                              _request_timeout=self._watch_timeout_s + 30)
        self._response = response
        try:
            _check(response)
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                if line:
                    version = self.apply(json.loads(line)) or version
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return version

    def apply(self, event: Mapping[str, Any]) -> str | None:
        """One watch event into the cache; returns its resourceVersion (public for tests)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise ApiException(status=obj.get("code"), reason=str(obj.get("message")))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            meta = obj.get("metadata") or {}
            ident = (str(meta.get("namespace") or ""), str(meta.get("name")))
            entry = None if kind == "DELETED" else self._entry(obj)
            with self._lock:
                old = self._objects.pop(ident, None)
                if old is not None:
                    filed = self._by_key.get(old[0], {})
                    filed.pop(ident, None)
                    if not filed:
                        self._by_key.pop(old[0], None)
                if entry is not None:
                    self._objects[ident] = entry[1]
                    self._by_key.setdefault(entry[1][0], {})[ident] = entry[1][1]
        return str(version) if version else None

    def _entry(self, obj: Mapping[str, Any]) -> tuple[ObjectKey, tuple[Hashable, V]] | None:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if not self._namespaces(namespace):
            return None
        try:
            return (namespace, str(meta.get("name"))), self._extract(obj)
        except (TypeError, ValueError, KeyError) as exc:  # one odd object must not blind the whole kind
            log.warning("%s informer: skipping %s/%s: %s", self.kind, namespace, meta.get("name"), exc)
            return None


def _check(response: Any) -> None:
    status = getattr(response, "status", 200)
    if isinstance(status, int) and not 200 <= status < 300:
        raise ApiException(status=status, reason=str(getattr(response, "reason", "")))


def plain_names(patterns: Iterable[str]) -> tuple[str, ...] | None:
    """The patterns when every one is a plain namespace name (no glob), else None."""
    chosen = tuple(patterns)
    if not chosen or any(ch in p for p in chosen for ch in "*?["):
        return None
    return chosen


class _AllSet:
    """`threading.Event.is_set` over several events: set when every one is."""

    def __init__(self, events: Iterable[threading.Event]) -> None:
        self._events = tuple(events)

    def is_set(self) -> bool:
        return all(e.is_set() for e in self._events)


class InformerGroup(Generic[V]):
    """One kind watched in several namespaces, one informer each, looked up as one.

    An operator granted its namespaces by RoleBindings may not list the kind cluster-wide: it lists and
    watches each of them.
    """

    def __init__(self, parts: Iterable[Informer[V]]) -> None:
        self.parts = tuple(parts)
        self.kind = self.parts[0].kind if self.parts else ""
        self.synced = _AllSet(p.synced for p in self.parts)

    def find(self, key: Hashable) -> list[V]:
        return [v for p in self.parts for v in p.find(key)]

    def items(self) -> list[tuple[ObjectKey, V]]:
        return [item for p in self.parts for item in p.items()]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def start(self) -> None:
        for p in self.parts:
            p.start()

    def stop(self) -> None:
        for p in self.parts:
            p.stop()
