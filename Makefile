# Everything installs into .venv on first use; only Python 3.11-3.13 and pip are needed (PYTHON=python3.13 make ... picks another).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo fit-demo test test-fast test-durations bench ablation mlflow-ui clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[search,dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a small Pareto search (Optuna/ASHA) on generated data, its 2 finalists + the
# paper's point + plain fusion confirmed with 2 fresh seeds, the pick tested once against plain
# fusion (paired bootstrap), figures, report and champion model, all in MLflow (a few minutes).
demo: $(STAMP)
	$(PY) search/fairvision_gender.py --local --preset tiny --objective pareto --num-samples 6 \
		--max-epochs 3 --grace-period 1 --finalists 2 --confirm-seeds 2 --max-concurrent 2 \
		--cpus-per-trial 1 --storage-path $(CURDIR)/results --name demo-$$(date +%Y%m%d-%H%M%S)

# One MultiFair fit on generated data, trainer only (no Ray, no MLflow).
fit-demo: $(STAMP)
	$(PY) -m trainer synthesize --layout fairvision --out data/fairvision-demo
	$(PY) -m trainer fit --dataset fairvision --data-root data/fairvision-demo --attribute gender \
		--mode full --preset tiny --epochs 3 --out results/fit-demo

# Two pytest-xdist workers: on 2 cores the suite leaves a third of the CPU idle when run serially
# (servers starting, Ray nodes joining, outages waited out). tests/conftest.py keeps the tests of a
# shared search or module fixture in one worker, and hands the groups out longest first by
# tests/durations.json (--no-loadscope-reorder keeps that order). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The full suite, as CI runs it (.ci/run).
test: $(STAMP)
	$(PY) -m pytest -q --timeout 900 --durations 30 $(XDIST)

# Everyday work: the suite without the tests marked slow (Ray sessions, extra Ray nodes, MLflow /
# PostgreSQL / S3 servers, end-to-end searches: most of CI's time).
test-fast: $(STAMP)
	$(PY) -m pytest -q --timeout 900 -m "not slow" $(XDIST)

# Rewrite tests/durations.json from a full run that passes (after adding or reshaping slow tests).
test-durations: $(STAMP)
	$(PY) -m pytest -q --timeout 900 $(XDIST) --record-durations

bench: $(STAMP)
	$(PY) benchmarks/bench_trainer.py

clean:
	rm -rf $(VENV) results data .pytest_cache
