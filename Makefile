# The two commands of the README. Both create ./.venv and install the project first.
#   make repro   - run the whole pipeline (dvc repro, through a local Prefect server)
#   make test    - lint and run the test suite (installs the Debian packages it needs if missing: chromium
#                  for the page test, fonts-noto-color-emoji for the emoji source)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-packages repro test bench clean-venv

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,inception]' -c constraints.txt
	touch $@

setup: $(VENV)/.installed

system-packages:
	.ci/install-system-packages

repro: setup
	$(VENV)/bin/ganpipe repro

test: setup system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

clean-venv:
	rm -rf $(VENV)
