# fusedrnn: the two commands that do all the set-up on a fresh machine.
#   make test    create .venv, install torch and fusedrnn from source, run the test suite on
#                every core (pytest-xdist), then side by side: the GPU compile gate
#                (benchmarks/compile_gate.py, no GPU needed), the GPU check's dry run
#                (benchmarks/gpu_check.sh --dry-run, CPU only) and the packaging checks
#                (tests/packaging/wheel_smoke.sh: wheel in a fresh venv, sdist)
#   make bench   the same set-up, then the benchmark suite on the default device
#   make mutants the same set-up, then every curated mutant against the tests that must catch it
# Set-up steps are stamped in .venv, so a second run only rebuilds what changed (objects in
# build/temp); the compile gate passes at once when nothing it compiles changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX

CSRC := $(shell find csrc -type f 2>/dev/null)

.PHONY: all install test compile-gate gpu-dry-run packaging bench mutants clean

all: test

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch
	@touch $@

# The build requirements (pyproject.toml [build-system]); the package's own dependencies and
# its [test] extra (pyproject.toml) come with the editable install below.
$(VENV)/.deps: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check "setuptools>=64" wheel ninja
	@touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(CSRC)
	$(PIP) install --quiet --disable-pip-version-check --no-build-isolation -e ".[test]"
	@touch $@

install: $(VENV)/.built

# The three checks after pytest use one to two cores each (pytest uses all): they run side by side,
# each one's output printed whole when it ends.  The dry run's CPU timings are not measurements: it
# runs torch on one thread, as two threads sharing the cores with the other checks spin at every
# parallel region's barrier (its bench stage took 80 s instead of 8).
test: install
	$(PY) -m pytest -q -n $(MAX_JOBS) tests
	$(MAKE) --no-print-directory -j3 --output-sync=target compile-gate gpu-dry-run packaging

compile-gate: install
	$(PY) benchmarks/compile_gate.py

gpu-dry-run: install
	OMP_NUM_THREADS=1 PYTHON=$(PY) bash benchmarks/gpu_check.sh --dry-run bench-out/gpu-dry-run

packaging: install
	bash tests/packaging/wheel_smoke.sh $(PY)

bench: install
	$(PY) -m fusedrnn bench

# Not part of CI: apply each curated bug (tests/mutants.py) and check the tests catch it.
mutants: install
	$(PY) tests/mutants.py

clean:
	rm -rf build *.egg-info fusedrnn/*.so
