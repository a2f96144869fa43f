# The two commands of the README. Both create ./.venv and install the project first.
#   make repro   - run the whole pipeline (dvc repro, through a local Prefect server)
#   make test    - lint and run the test suite (installs Debian's chromium for the page test if missing)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser repro test bench clean-venv

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,inception]' -c constraints.txt
	touch $@

setup: $(VENV)/.installed

browser:
	.ci/install-browser

repro: setup
	$(VENV)/bin/ganpipe repro

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

clean-venv:
	rm -rf $(VENV)
