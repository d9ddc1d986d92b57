# Every target does its own set-up (scripts/setup.sh is idempotent and fast the second time).
PY := .venv/bin/python

.PHONY: setup test test-fast lint demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

lint: setup
	.venv/bin/ruff check .

demo: setup
	$(PY) -m trainer_cli.demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .comfyui .cache runs
