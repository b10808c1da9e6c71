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
# test processes (pytest-xdist, one file per process at a time so module fixtures run once):
# most tests wait on a JVM start, a child process or a commit, so 2 overlap well on 2 cores
PYTEST_WORKERS ?= 2
PYTEST_PAR := $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
DIST ?= dist
PACK_VENV ?= build/pack-venv
PACK_EXTRAS ?=
PACK_COMPRESS ?= 1
EXTRAS_STAMP := $(VENV)/.installed-airflow-package

export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1
# Python caches what it compiles (__pycache__) unless PYTHONDONTWRITEBYTECODE is set, as it is on
# these machines: with it, and pip's --no-compile below, every process (each test's child job,
# Spark's Python workers, Airflow's tasks) compiled torch, pyspark and transformers from source
# again: 22 s of CPU for their imports against 9 s from the cache (docs/benchmarks.md)
unexport PYTHONDONTWRITEBYTECODE

# pip prints one warning per package about an empty local index on this kind of machine
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help setup sample run test test-fast lint bench bench-robust bench-labels bench-review bench-gpu gpu-bundle clean airflow package package-code package-env dag-check cluster-up cluster-down train train-reranker export-e5

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-15s %s\n", $$1, $$2}'

# --no-compile: pip would byte-compile every module it installs (Airflow, torch, pyspark: about
# 50 s of a fresh setup on 2 cores, docs/benchmarks.md); Python compiles the ones a run imports,
# once (the first process that imports a module writes its cache)
PIP_INSTALL := $(PY) -m pip install -q --no-compile

$(STAMP): setup.py
	@command -v java >/dev/null || { echo "error: Spark needs a Java runtime (JDK 17) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]' 2>&1 | $(PIP_QUIET)
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

# one pip run for everything (`make test` on a fresh machine resolves once, not twice)
$(EXTRAS_STAMP): setup.py
	@command -v java >/dev/null || { echo "error: Spark needs a Java runtime (JDK 17) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,airflow,package]' 2>&1 | $(PIP_QUIET)
	touch $(STAMP) $@

airflow: $(EXTRAS_STAMP) ## add Airflow 3 + the Spark provider and venv-pack to .venv (about 2 min)

dag-check: airflow ## parse airflow_dags/ as Airflow 3 would and list import errors
	AIRFLOW_HOME=$$(mktemp -d) $(PY) -c 'from airflow.dag_processing.dagbag import DagBag; \
		b = DagBag(dag_folder="airflow_dags"); print("dags:", sorted(b.dag_ids)); \
		print("import errors:", b.import_errors or "none"); raise SystemExit(1 if b.import_errors else 0)'

package: package-code package-env ## build dist/: --py-files zip, job script, conf profiles, packed venv

package-code: ## dist/listing_dedup_jobs.zip (lib + jobs, for --py-files), dedup_listings.py, cluster.yaml
	rm -rf build/pyfiles && mkdir -p build/pyfiles $(DIST)
	cp -r lib/listing_dedup jobs build/pyfiles/
	find build/pyfiles -name __pycache__ -prune -exec rm -rf {} +
	rm -f $(DIST)/listing_dedup_jobs.zip
	cd build/pyfiles && zip -qr $(abspath $(DIST))/listing_dedup_jobs.zip listing_dedup jobs
	cp jobs/dedup_listings.py conf/cluster.yaml conf/local.yaml $(DIST)/
	@ls -l $(DIST)/listing_dedup_jobs.zip

package-env: $(EXTRAS_STAMP) ## dist/listing_dedup_env.tar.gz: a fresh venv with the runtime deps, venv-packed
	rm -rf $(PACK_VENV) && $(PYTHON) -m venv $(PACK_VENV)
	$(PACK_VENV)/bin/python -m pip install -q '.$(if $(PACK_EXTRAS),[$(PACK_EXTRAS)])' 2>&1 | $(PIP_QUIET)
	mkdir -p $(DIST) && $(VENV)/bin/venv-pack -p $(PACK_VENV) -o $(DIST)/listing_dedup_env.tar.gz \
		--compress-level $(PACK_COMPRESS) --force --quiet
	chmod 644 $(DIST)/listing_dedup_env.tar.gz && ls -l $(DIST)/listing_dedup_env.tar.gz

CLUSTER_STATE ?= build/spark-cluster
CLUSTER_PORT ?= 7077
CLUSTER_WEBUI_PORT ?= 8080
CLUSTER_WORKERS ?= 2
CLUSTER_CORES ?= 1
CLUSTER_MEMORY ?= 3g
cluster-up: setup ## a standalone Spark cluster on 127.0.0.1:CLUSTER_PORT (master + CLUSTER_WORKERS workers; pids, logs in CLUSTER_STATE)
	$(PY) bin/spark_cluster.py up --state-dir $(CLUSTER_STATE) --port $(CLUSTER_PORT) --webui-port $(CLUSTER_WEBUI_PORT) \
		--workers $(CLUSTER_WORKERS) --cores $(CLUSTER_CORES) --memory $(CLUSTER_MEMORY)

cluster-down: ## stop the cluster of make cluster-up (by the pids it recorded)
	$(PY) bin/spark_cluster.py down --state-dir $(CLUSTER_STATE)

test: airflow ## run the whole test suite (CPU, local Spark, PYTEST_WORKERS=2 processes; prints its wall time and the 15 slowest)
	$(PY) -m pytest -q $(PYTEST_PAR) --durations=15 $(PYTEST_ARGS) tests

test-fast: airflow ## the suite without the tests marked slow (job runs, child processes): the edit loop
	$(PY) -m pytest -q $(PYTEST_PAR) -m "not slow" --durations=10 $(PYTEST_ARGS) tests

lint: setup ## ruff
	$(PY) -m ruff check lib jobs tests bench airflow_dags bin

bench: setup sample ## stage timings on the sample (see docs/benchmarks.md), then the robustness suite
	$(PY) bench/bench_stages.py --input $(SAMPLE)/listings.parquet --truth $(SAMPLE)/truth.csv
	$(MAKE) bench-robust
	$(MAKE) bench-labels
	$(MAKE) bench-review

bench-review: setup ## review loop: a simulated reviewer answering the review queue vs random pairs (docs/review.md)
	$(PY) bench/review.py --cache-dir data/cache

bench-robust: setup ## robustness suite: defaults vs the old defaults vs a TF-IDF baseline on other-shaped catalogs (docs/quality.md)
	$(PY) bench/robust.py --cache-dir data/cache

bench-labels: setup ## F1 vs labelled groups: how many a shop needs to tune the edge rule (docs/quality.md)
	$(PY) bench/label_curve.py --cache-dir data/cache

GPU_BUNDLE ?= build/gpu_bundle
bench-gpu: setup ## the GPU check without Spark: encoders and list scan on CUDA vs CPU (device=none here; README "GPU check")
	$(PY) bench/gpu.py

gpu-bundle: setup ## fp16 copies of MiniLM + EfficientNet-Lite0 in GPU_BUNDLE, for a GPU machine without the model packages
	$(PY) bench/gpu.py --write-bundle $(GPU_BUNDLE)

clean: ## remove generated data and outputs (keeps .venv; stops a make cluster-up cluster first)
	@if [ -f $(CLUSTER_STATE)/cluster.json ]; then $(PY) bin/spark_cluster.py down --state-dir $(CLUSTER_STATE); fi
	rm -rf $(WAREHOUSE) $(SAMPLE) spark-warehouse .pytest_cache build $(DIST)

TRAIN_INPUT ?= data/shopee_train_labelled/listings.parquet
MODEL_DIR ?= data/models/text_head
TRAIN_ARGS ?=
train: setup ## fine-tune the text model (conf/train.yaml) on TRAIN_INPUT into MODEL_DIR (docs/training.md)
	$(PY) jobs/train_embedder.py --conf conf/train.yaml --input $(TRAIN_INPUT) --out $(MODEL_DIR) $(TRAIN_ARGS)

RERANK_INPUT ?= data/shopee_fold4_labelled.parquet
RERANK_DIR ?= data/models/reranker
RERANK_CONF ?= --conf conf/local.yaml
train-reranker: setup ## train the pair re-ranker under RERANK_CONF on RERANK_INPUT into RERANK_DIR (docs/quality.md)
	$(PY) jobs/train_reranker.py $(RERANK_CONF) --input $(RERANK_INPUT) --out $(RERANK_DIR) $(TRAIN_ARGS)

export-e5: setup ## export the packaged e5-small to a trainable sentence-transformers dir (data/models/e5_small_st)
	$(PY) jobs/export_e5.py --out data/models/e5_small_st
