# kube-sft: every entry point a person or CI uses. `make demo` and `make test` are the Quickstart.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(PYTHON) -m uv
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
# Heavy, version-keyed builds (the Kubernetes control plane) live outside the repository.
export KUBE_SFT_CACHE ?= $(HOME)/.cache/kube-sft

.PHONY: images help env demo test lint typecheck unit crds cluster-bins lint-tools node-bins dev-cluster dev-cluster-down bench-data bench-train bench-operator gpu-test soak-long lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# The locked versions of uv.lock, exactly (`--frozen`: never re-resolved here; tests/unit/test_lock.py
# checks that it matches pyproject.toml). The project itself is installed editable.
$(VENV)/.installed: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --frozen --python $(PYTHON) --extra operator --extra trainer --extra dev
	@touch $@

env: $(VENV)/.installed  ## create .venv with the `sft` command and every dependency

lock: env  ## re-resolve uv.lock from pyproject.toml and re-export the images' requirement files from it
	$(UV) lock
	$(BIN)/python hack/images/export_requirements.py

demo: env  ## train the demo model locally on CPU and print held-out accuracy before/after
	@# A fresh run every time (the config says checkpoint.resume: never); an earlier run is kept aside.
	@if [ -d runs/demo ]; then mv runs/demo runs/demo.$$(date +%Y%m%d-%H%M%S); fi
	# One thread: the demo model is tiny, and busy-waiting thread pools collapse on shared cores.
	OMP_NUM_THREADS=1 $(BIN)/sft train --config examples/local/demo.yaml

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy

cluster-bins: env  ## build/cache kube-apiserver, etcd, controller-manager, scheduler, kubectl, helm
	@if [ -x hack/controlplane/build.sh ]; then hack/controlplane/build.sh; fi

lint-tools:  ## install/cache checkov (the rendered chart's linter) outside the repository
	hack/checkov/install.sh

node-bins: cluster-bins  ## build/cache the real test node: kubelet, containerd, pause image (+ Debian runc, CNI plugins)
	hack/node/build.sh

# The e2e scenarios run the images on a real node: both are built (or found in the cache) first.
test: env lint typecheck cluster-bins lint-tools node-bins images  ## ruff, mypy and the whole pytest suite (no GPU tests)
	$(BIN)/pytest -m "not gpu" tests

unit: env  ## the fast tests only
	$(BIN)/pytest -m "not gpu and not integration and not e2e" tests

crds: env  ## regenerate crds/, the chart's CRDs, values.schema.json and docs/api-reference.md from the models
	$(BIN)/python -m sft_operator.api.crd --write
	$(BIN)/python -m sft_operator.api.chart_values --write
	$(BIN)/python -m sft_operator.api.reference --write

bench-data: env  ## data pipeline vs TRL's preparation on T0 -> bench/results/data.json
	$(BIN)/python -m bench.bench_data

bench-train:  ## training throughput vs TRL (GPU device, after `source .gpu-rig/setup.sh`) -> bench/results/train-*.json
	PYTHONPATH=$(CURDIR)/trainer_image:$(CURDIR):$$PYTHONPATH python3 -m bench.bench_train $(BENCH_TRAIN_ARGS)

bench-operator: env cluster-bins  ## operator at scale on KWOK vs Kubeflow's training-operator -> bench/results/operator.json
	hack/training-operator/build.sh
	$(BIN)/python -m bench.bench_operator

SOAK_SECONDS ?= 600
SOAK_SEEDS ?= 1,2,3
SOAK_RECORD ?= /tmp/kube-sft-soak.jsonl
soak-long: env cluster-bins  ## the gang fault soak, long: 3 seeds x 10 min (+ drain), summary rows appended to $(SOAK_RECORD)
	KUBE_SFT_SOAK_SECONDS=$(SOAK_SECONDS) KUBE_SFT_SOAK_SEEDS=$(SOAK_SEEDS) KUBE_SFT_SOAK_RECORD=$(SOAK_RECORD) KUBE_SFT_SOAK_REAL_TRAINER=1 \
		$(BIN)/pytest -s --timeout 3600 tests/integration/operator/test_gang_integrity.py -k randomized_fault_soak

gpu-test:  ## the GPU tests (run on the device, after `source .gpu-rig/setup.sh`)
	python3 -m pytest -m gpu tests/gpu

images: env  ## build the operator and CPU trainer images with the chart's tags (Docker engine, else buildah)
	hack/images/build.sh

dev-cluster: env cluster-bins node-bins images  ## a local cluster (real node), the chart, a demo SFTJob run to the end
	$(BIN)/python -m devcluster.dev_cluster up

dev-cluster-down:  ## stop the dev cluster and remove everything it made
	$(BIN)/python -m devcluster.dev_cluster down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
