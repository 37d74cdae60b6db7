# FMBoost developer commands. `make install` then `make test` is all a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test test-fast docs docs-build lint format clean sample-data encode-shards demo app gpu-check

install: $(VENV)/.installed

# Reinstall only when the dependency declarations change.
$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,docs,app]'
	touch $@

# Two workers on a 2-core machine (pytest-xdist): the Slurm tests wait on their jobs with a core idle, and
# many tests wait on subprocesses; the Slurm tests stay together on one worker (xdist_group "slurm").
# On 2 cores a cold suite took 1047 s serially and 651 s this way (CI). TEST_WORKERS=0 runs it serially.
# pytest exits 5 when a filter selects no test; that is not a failure of the suite.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The inner loop: every test not marked slow (no training run, Slurm job, demo or compilation).
test-fast: install
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, pages in docs/, API reference from the docstrings).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# What CI runs: a broken link, anchor or docstring fails the build.
docs-build: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The bundled sample dataset: real photos from scikit-image in img2dataset format (no download).
sample-data: install
	$(BIN)/python -m data_pipeline.sample_data data/sample

# With no arguments: encode the sample dataset in pixel space into data/latents/sample/.
# Real data: make encode-shards INPUT='/data/laion/{00000..00127}.tar' OUTPUT=/data/latents/laion1k \
#                CONFIG=configs/encode/laion_1k.yaml [ARGS='batch_size=32 num_workers=16']
CONFIG ?= configs/encode/sample.yaml
encode-shards: install
	@if [ "$(CONFIG)" = "configs/encode/sample.yaml" ] && [ -z "$(INPUT)" ]; then $(MAKE) --no-print-directory sample-data; fi
	$(BIN)/python -m data_pipeline.encode_shards $(CONFIG) $(if $(INPUT),'input=$(INPUT)') $(if $(OUTPUT),'output=$(OUTPUT)') $(ARGS)

# The whole system on this machine in under 10 minutes: data, encoding, 2-task DeepSpeed training,
# evaluation. Reruns skip finished stages; FRESH=1 starts over; FIRST_STAGE=taesd WEIGHTS=DIR uses TAEF2.
demo: install
	FRESH=$(FRESH) FIRST_STAGE=$(FIRST_STAGE) WEIGHTS=$(WEIGHTS) bash scripts/demo.sh

# The browser app on http://127.0.0.1:7860: boost your own images and compare. After `make demo` it opens
# on the demo's stage; STAGE=DIR (repeat with ARGS='--stage DIR2') offers trained stages instead.
app: install
	$(BIN)/fmboost-app $(if $(STAGE),--stage '$(STAGE)') $(ARGS)

# On a CUDA machine: paper-size training (ZeRO-2, bf16, compile) and inference figures as JSON
# (bench/gpu_check.py). ARGS='--small' checks the script itself on any machine.
gpu-check: install
	$(BIN)/python bench/gpu_check.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
