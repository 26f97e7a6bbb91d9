# Two commands for a fresh machine; each does its own set-up.
#   make study   run the study (the reference sweep: 17 models x 3 seeds x 100 epochs)
#                -> results/, img/
#   make test    run the tests (unit, notebooks in smoke mode, papermill batch, browser)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STUDY_ARGS ?=

.PHONY: setup system-deps study smoke test notebooks lab bench table clean-smoke lm-gap extensions

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# Best effort, Debian/Ubuntu as root only: Fashion-MNIST from the distribution (used when
# there is no network for torchvision's download) and Chromium for the browser test.
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && apt-get install -y -q dataset-fashion-mnist chromium; \
	else echo "system-deps: no apt-get or not root; skipping (data will be downloaded)"; fi

study: setup
	@[ -d /usr/share/datasets/fashion-mnist ] || $(MAKE) --no-print-directory system-deps || true
	$(BIN)/lowrank-study $(STUDY_ARGS)

smoke: setup
	$(BIN)/lowrank-study --smoke $(STUDY_ARGS)

test: setup
	$(BIN)/pytest

# Where the LM's gap comes from (hours on a CPU; every command resumes from its records, and a
# stack in flight from its last save): the SVD-started control and the students, the refined
# grids, the scale series (d_model 64; 256 on the coarse grid, for the CPU budget) and the
# 8,000-step budget (ranks 16 and 32 first, then 64); then the LM notebook over all of them.
LM := $(BIN)/lowrank-study lm --no-notebook
lm-gap: setup
	$(LM) --phases svd teacher search seeds
	$(LM) --d-model 64 --n-head 2 --ranks 8 16 32 --refine-ranks 8 16 32 \
	  --phases search seeds --results-dir results/lm_scale
	$(LM) --d-model 256 --n-head 8 --ranks 32 64 128 --inits default --refine 0 \
	  --phases search seeds --results-dir results/lm_scale
	$(LM) --iters 8000 --ranks 16 32 --inits default --refine 0 \
	  --phases search seeds --results-dir results/lm_budget
	$(LM) --iters 8000 --ranks 16 32 64 --inits default --refine 0 \
	  --phases search seeds --results-dir results/lm_budget
	$(BIN)/lowrank-study lm

# The extensions on one protocol (many CPU hours; resumes): the transformer at each rank, then
# the MLP; then notebooks/extensions.ipynb over the records.
EXT := $(BIN)/lowrank-study extensions --no-notebook
extensions: setup
	$(EXT) --ranks 32 --parts lm
	$(EXT) --ranks 16 64 --parts lm
	$(EXT) --parts mlp
	$(BIN)/lowrank-study extensions

# Re-execute the committed notebooks in place (cwd notebooks/); runs with records are skipped.
# (The panels draw into Image widgets: papermill hangs on cells that fill an Output widget,
# jupyter/nbclient#312.)
notebooks: setup
	cd notebooks && for nb in shakespeare_char tuned theory study summary explorer; do \
	  ../$(BIN)/papermill $$nb.ipynb $$nb.ipynb -k python3 --cwd . || exit 1; done

lab: setup
	$(BIN)/jupyter lab notebooks/

# The sweep one model at a time vs stacked vs its FLOP bound, three seeds vs one, and one epoch
# against the original's DataLoader pipeline (about 3 minutes on a 2-core CPU); then the
# character LM one model at a time against many at once (about 2 minutes); then every row of
# the extensions' comparison side by side (about 7 minutes, single-threaded).
bench: setup
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_lm.py --profile $(if $(NANOGPT),--nanogpt $(NANOGPT))
	$(BIN)/python benchmarks/bench_extensions.py

table: setup
	$(BIN)/lowrank-study table
