# Two commands do everything on a fresh machine:
#   make report   the main job: a report of the shipped models (report.html)
#   make test     install and run the test suite
# torch goes in first, alone: resolved as a dependency it would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

report: install
	$(BIN)/anchor-interp report

test: install
	$(BIN)/python -m pytest

.PHONY: install report test
