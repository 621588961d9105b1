# Two commands do everything on a fresh machine:
#   make report     the main job: classify the shipped models and write report.html
#   make test       install everything (Ray and headless Chromium included) and run the tests
# on TransformerLens 3.9 (HookedTransformer), the default line. The other supported line,
# TransformerLens 4 (TransformerBridge), has its own environment:
#   make test-tl4   the same suite in .venv-tl4 with transformer-lens 4.x
# torch goes in first, alone: left for pip to resolve as a dependency it pulls a multi-GB
# CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
TL     ?= transformer-lens>=3.9,<4
TL4    ?= transformer-lens>=4.3,<5

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet '$(TL)' -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed

# The report test renders the HTML report in a real headless browser.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null)

report: install
	$(BIN)/anchor-interp report

test: install chromium
	$(BIN)/python -m pytest

test-tl4:
	$(MAKE) test VENV=.venv-tl4 TL='$(TL4)'

.PHONY: install chromium report test test-tl4
