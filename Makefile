# Quick start:  make demo   (set up, then run the main job on the bundled tiny base)
#               make test   (set up, then run the test suite; what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.erasecli-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 is a small CPU build on these machines; elsewhere pip picks the wheel for your platform.
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.2"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 bash scripts/demo.sh

# Two pytest-xdist workers of one torch thread each: on 2 cores the tiny models' kernels are too small for two
# threads to help one process, so two processes finish the suite ~1.4x sooner. TEST_JOBS=0 runs it in one process.
# The 15 slowest tests are listed at the end: where the 10-minute budget goes.
TEST_JOBS ?= 2
test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadgroup \
		--durations=15

bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench all

clean:
	rm -rf $(VENV) out
