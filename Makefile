# Two entry points: `make run` (train the default job) and `make test` (the whole suite).
# torch is installed first, pinned, so that no dependency pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: run test install browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/agentsync train

# The report test opens report.html in headless Chromium. Installed from Debian when missing and
# we are root; otherwise (or if apt fails) say why and go on: that one test then skips, saying so.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then \
	  true; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "make test: no Chromium and not root, so not installing it; the report browser test will skip" \
	       "(install it with: sudo apt-get install chromium)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: no Chromium and no apt-get; the report browser test will skip"; \
	else \
	  echo "make test: installing Debian's chromium for the report browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "make test: apt-get could not install chromium; the report browser test will skip"; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/allreduce_vs_ddp.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
