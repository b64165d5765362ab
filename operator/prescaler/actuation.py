"""Reads and writes the scale of targets through the Kubernetes API (the only module that patches them).

Only the `/scale` subresource is written (least privilege); HPAs only in HPAMinReplicas mode. Blocking
client calls: the caller runs them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from prescaler.spec import TargetRef


class TargetNotFound(Exception):
    pass


@dataclass(frozen=True)
class TargetState:
    kind: str
    name: str
    spec_replicas: int
    ready_replicas: int
    generation: int


@dataclass(frozen=True)
class HpaState:
    name: str
    min_replicas: int
    max_replicas: int
    current_replicas: int


def load_client_config() -> None:
    """In-cluster service account when running in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Actuator:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    def read_target(self, namespace: str, ref: TargetRef) -> TargetState:
        try:
            if ref.kind == "Deployment":
                obj: Any = self.apps.read_namespaced_deployment(ref.name, namespace)
            else:
                obj = self.apps.read_namespaced_stateful_set(ref.name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise TargetNotFound(f"{ref.kind} {namespace}/{ref.name} not found") from exc
            raise
        return TargetState(
            kind=ref.kind,
            name=ref.name,
            spec_replicas=int(obj.spec.replicas if obj.spec.replicas is not None else 1),
            ready_replicas=int((obj.status.ready_replicas if obj.status else None) or 0),
            generation=int(obj.metadata.generation or 0),
        )

    def scale(self, namespace: str, ref: TargetRef, replicas: int) -> None:
        body = {"spec": {"replicas": int(replicas)}}
        try:
            if ref.kind == "Deployment":
                self.apps.patch_namespaced_deployment_scale(ref.name, namespace, body)
            else:
                self.apps.patch_namespaced_stateful_set_scale(ref.name, namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                raise TargetNotFound(f"{ref.kind} {namespace}/{ref.name} not found") from exc
            raise

    def hpas_for(self, namespace: str, ref: TargetRef) -> list[HpaState]:
        found = []
        for hpa in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items:
            tr = hpa.spec.scale_target_ref
            if tr.kind == ref.kind and tr.name == ref.name:
                found.append(
                    HpaState(
                        name=str(hpa.metadata.name if hpa.metadata else ""),
                        min_replicas=int(hpa.spec.min_replicas or 1),
                        max_replicas=int(hpa.spec.max_replicas),
                        current_replicas=int((hpa.status.current_replicas if hpa.status else 0) or 0),
                    )
                )
        return found

    def set_hpa_min(self, namespace: str, name: str, min_replicas: int) -> None:
        body = {"spec": {"minReplicas": int(min_replicas)}}
        self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(name, namespace, body)
