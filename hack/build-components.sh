#!/usr/bin/env bash
# Builds the real control-plane components from their Go modules, once, into a cache
# outside the repo. Pinned versions; re-running is a no-op when the binaries exist.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.21}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.18.6}"

CACHE="${PRESCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prescaler}"
BIN="$CACHE/bin/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}"
WORK="$CACHE/build"
mkdir -p "$BIN" "$WORK"
export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
all_built() {
  local b
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}
if all_built; then echo "$BIN"; exit 0; fi
# Several callers (tests, chart rendering, the demo) may ask at once; they share one go.mod and one
# output dir, so builds are serialised and whoever waited re-checks what is still missing.
exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
  echo "waiting for another build of the components to finish" >&2
  flock 9
fi
if all_built; then echo "$BIN"; exit 0; fi
start=$(date +%s)

# k8s.io/kubernetes requires its staging modules at v0.0.0 with replace lines that only
# apply inside its own repo; a wrapper module points them at the published v0.x tags.
k8s_minor="${K8S_VERSION#v1.}"
staging_version="v0.${k8s_minor}"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)
build_k8s() {
  local dir="$WORK/k8s-$K8S_VERSION"
  mkdir -p "$dir"
  {
    echo "module prescaler.dev/build/k8s"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $staging_version"; done
    echo ")"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  local ver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor%%.*} -X k8s.io/component-base/version.gitTreeState=clean"
  ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${k8s_minor%%.*}"
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || go mod tidy)
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [ -x "$BIN/$c" ] && continue
    echo "building $c $K8S_VERSION" >&2
    (cd "$dir" && go build -ldflags "-s -w $ver" -o "$BIN/$c.tmp.$$" "k8s.io/kubernetes/cmd/$c" && mv "$BIN/$c.tmp.$$" "$BIN/$c")
  done
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module prescaler.dev/build/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$dir/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$dir/tools.go"
  echo "building etcd $ETCD_VERSION" >&2
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/api/v3@$ETCD_VERSION" \
      "go.etcd.io/etcd/client/pkg/v3@$ETCD_VERSION" "go.etcd.io/etcd/client/v3@$ETCD_VERSION" \
      "go.etcd.io/etcd/client/v2@${ETCD_VERSION}" "go.etcd.io/etcd/pkg/v3@$ETCD_VERSION" \
      "go.etcd.io/etcd/raft/v3@$ETCD_VERSION" >/dev/null 2>&1 || true
   go mod tidy && go build -ldflags "-s -w" -o "$BIN/etcd.tmp.$$" go.etcd.io/etcd/server/v3 && mv "$BIN/etcd.tmp.$$" "$BIN/etcd")
}

build_gotool() { # name module@version pkg
  [ -x "$BIN/$1" ] && return
  echo "building $1 $2" >&2
  GOBIN="$WORK/gobin-$1" go install "$2"
  mv "$WORK/gobin-$1/$1" "$BIN/$1"
}

build_etcd
build_gotool kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
build_gotool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
build_k8s
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
