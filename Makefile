# livelab: `make demo` and `make test` do their own set-up (scripts/bootstrap.sh), idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
# The venv's bin goes first on PATH for what runs in it (nbgrader calls `alembic` from PATH),
# but not for the bootstrap, which must find the system python3 to create the venv.
IN_VENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
PYTEST_ARGS ?=

.PHONY: help setup test demo bench clean

help:
	@echo "livelab make targets:"
	@echo "  make demo     set up if needed, then run 'livelab demo' (a live lab, end to end)"
	@echo "  make test     set up if needed, then run the test suite (PYTEST_ARGS=... to pass options)"
	@echo "  make bench    set up if needed, then run every bench/*.py (results in bench/results/)"
	@echo "  make setup    create .venv, install the package, mosquitto, chromium and the livelab kernelspec"
	@echo "  make clean    remove .venv and caches (keeps bench/results)"

setup:
	@bash scripts/bootstrap.sh

test: setup
	@$(IN_VENV) $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	@$(IN_VENV) $(VENV)/bin/livelab demo

bench: setup
	@for f in bench/*.py; do [ -e "$$f" ] || continue; echo "bench: $$f"; $(IN_VENV) $(VENV)/bin/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -path ./.git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +
