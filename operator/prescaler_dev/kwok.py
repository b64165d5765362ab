"""What kwok plays for the local control plane: the lifecycle stages of fake nodes and their pods, and the
Node objects it manages."""

from __future__ import annotations

import ipaddress
from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Pods carrying this label (value "true") run to completion (phase Succeeded) instead of staying Ready,
# so one-shot pods such as `helm test` hooks finish on fake nodes.
KWOK_COMPLETE_LABEL = "prescaler.dev/kwok-complete"
NODE_IP = "10.240.0.1"  # the first fake node's address; the others follow it

_NODE_CONDITIONS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

_NODE_INFO = """\
addresses:
{{ with .status.addresses }}{{ YAML . 1 }}{{ else }}
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ .metadata.name | Quote }}
  type: Hostname
{{ end }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: ""
  machineID: ""
  bootID: ""
  systemUUID: ""
phase: Running
"""

_POD_START = """\
{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""

_POD_READY = """\
{{ $now := Now }}
conditions:
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ or $.status.startTime $now | Quote }}
{{ end }}
"""

_POD_COMPLETE = """\
{{ $now := Now }}
phase: Succeeded
conditions:
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ or $.status.startTime $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""

_READY_KEY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def kwok_stages(pod_ready_delay: float) -> list[dict[str, Any]]:
    """The lifecycle kwok plays for nodes and pods.

    A pod runs (IP, Running, Ready=False) as soon as it is bound, and turns Ready only
    ``pod_ready_delay`` seconds later: the stand-in for a real application's start-up time.
    A pod labelled ``KWOK_COMPLETE_LABEL=true`` instead exits with code 0 after that delay.
    """

    def stage(name: str, kind: str, exprs: list[dict[str, Any]], next_: dict[str, Any], **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": exprs},
            "next": next_,
        }
        spec.update(extra)
        return {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": name},
            "spec": spec,
        }

    not_deleted = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    complete_key = f'.metadata.labels["{KWOK_COMPLETE_LABEL}"]'
    delay_ms = round(pod_ready_delay * 1000)
    return [
        stage(
            "prescaler-node-initialize",
            "Node",
            [{"key": _READY_KEY, "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_CONDITIONS + _NODE_INFO},
        ),
        stage(
            "prescaler-node-heartbeat",
            "Node",
            [
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": _READY_KEY, "operator": "In", "values": ["True"]},
            ],
            {"statusTemplate": _NODE_CONDITIONS},
            delay={"durationMilliseconds": 15000, "jitterDurationMilliseconds": 20000},
            immediateNextStage=True,
        ),
        stage(
            "prescaler-pod-start",
            "Pod",
            [not_deleted, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            {"statusTemplate": _POD_START},
        ),
        stage(
            "prescaler-pod-ready",
            "Pod",
            [
                not_deleted,
                {"key": ".status.podIP", "operator": "Exists"},
                {"key": _READY_KEY, "operator": "NotIn", "values": ["True"]},
                {"key": complete_key, "operator": "NotIn", "values": ["true"]},
            ],
            {"statusTemplate": _POD_READY},
            delay={"durationMilliseconds": delay_ms},
        ),
        stage(
            "prescaler-pod-complete",
            "Pod",
            [
                not_deleted,
                {"key": ".status.podIP", "operator": "Exists"},
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": complete_key, "operator": "In", "values": ["true"]},
            ],
            {"statusTemplate": _POD_COMPLETE},
            delay={"durationMilliseconds": delay_ms},
        ),
        # No kubelet confirms a deletion, so kwok has to finish it or pods stay Terminating forever.
        stage(
            "prescaler-pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ]


def node_manifest(name: str, index: int, cpu: str, memory: str, pods: str) -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": pods}
    address = str(ipaddress.IPv4Address(NODE_IP) + index)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        # Nodes accept status on create, which is how a kubelet registers its capacity.
        "status": {
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        },
    }
