# Quickstart targets; each one sets up what it needs first (idempotent, fast the second time).
VENV ?= .venv
ANBENCH = $(VENV)/bin/anbench
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: setup run test test-all lint bench

setup:
	@bash scripts/setup.sh

run: setup
	$(ANBENCH) run --methods anprompt,dapt --noise paper

test: setup
	$(VENV)/bin/python -m pytest -m "not slow" -q

test-all: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
