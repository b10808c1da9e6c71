# listing-dedup: `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE ?= data/sample
WAREHOUSE ?= warehouse
RUN_DATE ?= 2026-01-01
PYTEST_ARGS ?=

export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

# pip prints one warning per package about an empty local index on this kind of machine
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help setup sample run test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.py
	@command -v java >/dev/null || { echo "error: Spark needs a Java runtime (JDK 17) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	touch $@

setup: $(STAMP) ## create .venv and install the project with its pinned dependencies

$(SAMPLE)/listings.parquet: | $(STAMP)
	$(PY) jobs/make_sample.py --out $(SAMPLE)

sample: $(SAMPLE)/listings.parquet ## generate the bundled sample catalog (deterministic)

run: setup sample ## run the job on the sample with local Spark, then score it
	$(PY) jobs/dedup_listings.py --conf conf/local.yaml --input $(SAMPLE)/listings.parquet \
		--run-date $(RUN_DATE) --warehouse $(WAREHOUSE)
	@echo "score against the sample's known groups:"
	$(PY) jobs/evaluate.py --warehouse $(WAREHOUSE) --run-date $(RUN_DATE) --truth $(SAMPLE)/truth.csv

test: setup ## run the test suite (CPU, local Spark)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

lint: setup ## ruff
	$(PY) -m ruff check lib jobs tests bench

bench: setup ## stage timings on the sample (see docs/benchmarks.md)
	$(PY) bench/bench_stages.py --input $(SAMPLE)/listings.parquet

clean: ## remove generated data and outputs (keeps .venv)
	rm -rf $(WAREHOUSE) $(SAMPLE) spark-warehouse .pytest_cache
