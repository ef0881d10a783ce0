# spark-cf: the two quick-start commands and a few helpers. Needs Python 3.10+ and Java 17+.
#   make nightly   install, generate the embedded default data if missing, run the nightly job
#   make test      install with the test extra and run the test suite (test-all: with the
#                  `extended` variants too)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA := data/synthetic/ratings.parquet
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: install nightly test test-all dist bench bench-als clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Installed once, and again only when pyproject.toml changes (the stamp file records it).
STAMP := $(VENV)/.installed
install: $(STAMP)
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test,plot]'
	touch $@

$(DATA): | install
	$(BIN)/python jobs/generate.py --output $(DATA) --num-users 3000 --num-items 1500 \
		--num-ratings 200000 --true-rank 8 --seed 7

nightly: install $(DATA)
	$(BIN)/spark-submit --master 'local[2]' --driver-memory 4g jobs/nightly.py --config conf/local.toml

# make test (and CI) leaves out the `extended` variants (see pyproject.toml); test-all runs them.
test: install
	$(BIN)/python -m pytest -m "not extended" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The library as one zip for spark-submit --py-files (see README, "On a cluster").
dist: install
	$(BIN)/python -m spark_cf.packaging dist/spark_cf.zip

bench: install
	$(BIN)/python benchmarks/iteration_speed.py --sizes 1000000 5000000

# spark-cf against Spark MLlib ALS (needs ../shared/data; see docs/benchmarks.md)
bench-als: install
	$(BIN)/python benchmarks/vs_als.py

clean:
	rm -rf dist build *.egg-info output spark-warehouse
