# prescaler — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export PRESCALER_CACHE ?= $(HOME)/.cache/prescaler

.PHONY: demo test unit e2e lint bench setup venv system-deps components postgres manifests \
        kind-up kind-down image clean

## demo: PostgreSQL + local control plane, simulated traffic, operator on scaled time, report
demo: setup components
	$(PY) -m prescaler.demo

## test: everything the tests need, then unit + e2e tests
test: setup components
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/e2e

e2e: setup components
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

lint: setup components
	.venv/bin/ruff check operator tests bench hack
	.venv/bin/ruff format --check operator tests bench hack || true
	.venv/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_crd.py tests/test_chart.py tests/test_dashboard.py

## bench: backtest KPIs on both traces, forecaster quality and speed, fleet benchmark
bench: setup components
	$(PY) bench/run.py

setup: system-deps $(VENV_STAMP) postgres

system-deps:
	@bash hack/system-deps.sh

$(VENV_STAMP): pyproject.toml
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV_STAMP)

postgres: $(VENV_STAMP)
	$(PY) -m prescaler.pgserver start

components:
	@bash hack/build-components.sh >/dev/null

manifests:
	bash hack/render-manifests.sh

clean:
	-$(PY) -m prescaler.pgserver stop
	rm -rf .venv build dist bench/results
