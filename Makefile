# prescaler — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export PRESCALER_CACHE ?= $(HOME)/.cache/prescaler

.PHONY: demo test unit e2e lint bench setup venv system-deps components postgres manifests image \
        kind-up kind-down clean

## demo: PostgreSQL + local control plane, simulated traffic, operator on scaled time, report
demo: setup components
	$(PY) -m prescaler_dev.demo  # starts and stops its own PostgreSQL when none is running

## test: everything the tests need, then unit + e2e tests
test: setup postgres components image
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: setup postgres
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/e2e

e2e: setup postgres components image
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

lint: setup postgres components
	.venv/bin/ruff check operator tests bench hack
	.venv/bin/mypy
	PATH="$$(bash hack/build-components.sh):$$PATH" helm lint --strict --kube-version 1.33.0 charts/prescaler
	L=$$(bash hack/build-dashboard-linter.sh) && $$L lint --strict --config charts/prescaler/dashboards/.lint \
	  charts/prescaler/dashboards/prescaler.json
	bash hack/render-manifests.sh --check
	$(PY) -m pytest -q -p no:cacheprovider tests/test_crd.py tests/test_chart.py tests/test_dashboard.py \
	  tests/test_readme.py

## bench: backtest KPIs on both traces, forecaster quality and speed, fleet benchmark
bench: setup postgres components
	$(PY) bench/run.py

setup: system-deps $(VENV_STAMP)

system-deps:
	@bash hack/system-deps.sh

$(VENV_STAMP): pyproject.toml
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV_STAMP)

postgres: $(VENV_STAMP)
	$(PY) -m prescaler_dev.pgserver start

components:
	@bash hack/build-components.sh >/dev/null

## image: the operator image (prescaler:dev by default) on a base made from Debian packages, no registry needed
image:
	@bash hack/build-image.sh >/dev/null

manifests:
	bash hack/render-manifests.sh

clean:
	-$(PY) -m prescaler_dev.pgserver stop
	rm -rf .venv build dist bench/results

# ---- kind path (needs Docker; not runnable on machines without a container engine) ----
KIND ?= kind
KIND_CLUSTER ?= prescaler
IMAGE_REPO ?= ghcr.io/prescaler/prescaler
IMAGE_TAG ?= 0.1.0
KIND_MONITORING ?= 0
KCTX := kind-$(KIND_CLUSTER)

## kind-up: kind cluster, image, demo PostgreSQL + data, chart; KIND_MONITORING=1 adds kube-prometheus-stack,
# the ServiceMonitors and the collector fed from that Prometheus (charts/prescaler/ci/collector-values.yaml)
kind-up:
	$(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	docker build -t $(IMAGE_REPO):$(IMAGE_TAG) .
	$(KIND) load docker-image $(IMAGE_REPO):$(IMAGE_TAG) --name $(KIND_CLUSTER)
	kubectl --context $(KCTX) apply -f manifests/demo/postgres.yaml
	kubectl --context $(KCTX) -n prescaler-system rollout status deployment/prescaler-postgres --timeout=300s
	@if [ "$(KIND_MONITORING)" = 1 ]; then \
	  helm repo add prometheus-community https://prometheus-community.github.io/helm-charts && \
	  helm repo update prometheus-community && \
	  helm --kube-context $(KCTX) upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
	    -n monitoring --create-namespace --wait --timeout 10m \
	    --set grafana.service.type=NodePort --set grafana.service.nodePort=30300 \
	    --set grafana.sidecar.dashboards.enabled=true --set grafana.sidecar.dashboards.searchNamespace=ALL; fi
	helm --kube-context $(KCTX) upgrade --install prescaler charts/prescaler -n prescaler-system --create-namespace \
	  --wait --set image.repository=$(IMAGE_REPO) --set image.tag=$(IMAGE_TAG) \
	  $(if $(filter 1,$(KIND_MONITORING)),-f charts/prescaler/ci/collector-values.yaml)
	kubectl --context $(KCTX) apply -f manifests/demo/simulate-job.yaml
	kubectl --context $(KCTX) -n prescaler-system wait --for=condition=complete job/prescaler-simulate --timeout=600s
	kubectl --context $(KCTX) apply -f manifests/examples/00-namespace.yaml -f manifests/examples/workout-api.yaml
	@echo "Grafana (KIND_MONITORING=1): http://localhost:3000"

## kind-down: delete the kind cluster
kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)
