# prescaler — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export PRESCALER_CACHE ?= $(HOME)/.cache/prescaler

.PHONY: demo test unit integration e2e lint bench setup venv system-deps components postgres manifests image \
        kind-up kind-down clean

## demo: PostgreSQL + local control plane, simulated traffic, operator on scaled time, report
demo: setup components
	$(PY) -m prescaler_dev.demo  # starts and stops its own PostgreSQL when none is running

# Three tiers, each a folder of tests/ (tests/README.md): unit needs only the venv; integration runs real
# PostgreSQL, Prometheus, Kafka and helm; e2e runs the local control plane.
# Workers (pytest-xdist), chosen from runs on a 2-core machine. unit: one per core, its tests are CPU-bound.
# integration and e2e: whole files per worker (--dist loadfile), so a module's Kafka broker, Prometheus or
# operator starts once; their tests mostly wait on those servers, and a second worker overlaps the waits.
# e2e stays at two workers whatever the core count: each worker starts its own control plane (the session
# fixture), cheap beside the modules' run time but a few processes and some memory apiece.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15
WORKERS ?= auto
UNIT_ARGS ?= -n $(WORKERS)
INTEGRATION_ARGS ?= -n $(WORKERS) --dist loadfile
E2E_ARGS ?= -n 2 --dist loadfile

## test: everything the tests need, then all three tiers; each tier runs even when an earlier one failed
test: setup postgres components image
	@status=0; \
	$(PYTEST) $(UNIT_ARGS) tests/unit || status=1; \
	$(PYTEST) $(INTEGRATION_ARGS) tests/integration || status=1; \
	$(PYTEST) $(E2E_ARGS) tests/e2e || status=1; \
	exit $$status

## unit: pure logic; no database, server, cluster or network
unit: $(VENV_STAMP)
	$(PYTEST) $(UNIT_ARGS) tests/unit

integration: setup postgres components
	$(PYTEST) $(INTEGRATION_ARGS) tests/integration

e2e: setup postgres components image
	$(PYTEST) $(E2E_ARGS) tests/e2e

lint: setup postgres components
	.venv/bin/ruff check operator tests bench hack
	.venv/bin/mypy
	PATH="$$(bash hack/build-components.sh):$$PATH" helm lint --strict --kube-version 1.33.0 charts/prescaler
	L=$$(bash hack/build-dashboard-linter.sh) && $$L lint --strict --config charts/prescaler/dashboards/.lint \
	  charts/prescaler/dashboards/prescaler.json
	bash hack/render-manifests.sh --check
	$(PYTEST) tests/unit/test_crd.py tests/unit/test_dashboard.py tests/unit/test_readme.py \
	  tests/integration/test_chart.py tests/integration/test_dashboard.py

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
