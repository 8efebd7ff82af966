# Shortcuts for the scripts README.md documents.
.PHONY: setup run test down bench lint
setup: ; bash scripts/setup
run: ; bash scripts/run
test: ; bash scripts/test
down: ; .venv/bin/cloudlessctl dev down
lint: ; .venv/bin/ruff check . && .venv/bin/lint-imports && .venv/bin/mypy
bench: ; .venv/bin/python bench/apply_latency.py && .venv/bin/python bench/report.py
