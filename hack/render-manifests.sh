#!/usr/bin/env bash
# Regenerates charts/prescaler/crds/ and manifests/prescaler.yaml; `--check` only reports drift.
# The work is done by render-manifests.py; this wrapper picks the repo's Python and the built helm.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
if [ -z "${HELM:-}" ] && ! command -v helm >/dev/null; then
  HELM="$(bash "$root/hack/build-components.sh")/helm"
  export HELM
fi
exec "$python" "$root/hack/render-manifests.py" "$@"
