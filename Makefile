PY ?= python3
# the benchmark `make bench` runs: a jobs/bench.py subcommand and its options (`python jobs/bench.py --help`)
BENCH ?= fit-time
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build lying on this machine's disk; the range in pyproject accepts it (GPU users keep their CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	# one lock for the venv and the images: k8s/image/requirements*.txt (written by k8s/render.py from this
	# venv), as pip constraints (which take no extras)
	sed -E 's/\[[^]]*\]//' k8s/image/requirements.txt k8s/image/requirements-mlflow.txt > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,omics,bench,k8s]'

venv: $(BIN)/activate

demo: venv
	$(BIN)/python jobs/demo.py

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python jobs/bench.py $(BENCH)

clean:
	rm -rf $(VENV) mlflow.db mlartifacts ray_results .pytest_cache
