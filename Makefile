# `make train` and `make test` work on a fresh machine: they create .venv from the requirements first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test throughput mutants clean-venv

# Re-install only when a requirements file changed since the last install.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

train: $(VENV)/.installed
	$(BIN)/python train.py $(ARGS)

# Two worker processes (pytest-xdist), each test on one thread: the suite's time goes mostly to single-threaded
# train.py subprocesses, so two cores run it in about half the time. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

# Renamed outright with the tool (`bench` -> `throughput`, issue 20), as the README says of the commands.
throughput: $(VENV)/.installed
	$(BIN)/python -m diffusion.tools.throughput $(ARGS)

# Mutation testing of the diffusion math against its fast tests ([tool.mutmut] in pyproject.toml; BENCHMARKS.md).
# CPU heavy: niced, one test process at a time, stopped after MUTANTS_TIMEOUT seconds. `mutants/` keeps the results
# and a second run re-tests only functions whose code changed: after adding tests, delete mutants/ (or pass the
# survivors' names in ARGS and delete mutants/mutmut-stats.json). Then the score and the surviving mutants.
MUTANTS_TIMEOUT ?= 3600
mutants: $(VENV)/.installed
	CI=true nice -n 15 timeout $(MUTANTS_TIMEOUT) $(BIN)/python tests/mutation.py run --max-children 1 $(ARGS)
	$(BIN)/python tests/mutation.py score

clean-venv:
	rm -rf $(VENV)
