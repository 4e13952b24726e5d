# citygrid — the two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
BIN := .venv/bin

.PHONY: run test bench lint db-stop clean

run:
	@scripts/bootstrap.sh run
	$(BIN)/citygrid run

test:
	@scripts/bootstrap.sh test
	$(BIN)/lint-imports   # the layering contract (.importlinter)
	$(BIN)/citygrid db start
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# `make bench SCALE=10M`: bench_province grows its synthetic province to 100k, 1M and 10M cases (default: 100k).
bench:
	@scripts/bootstrap.sh bench
	$(BIN)/citygrid db start
	@set -e; for b in bench/bench_*.py; do echo "### $$b"; SCALE=$(SCALE) $(BIN)/python $$b; done

lint:
	$(BIN)/ruff check .
	$(BIN)/lint-imports

db-stop:
	$(BIN)/citygrid db stop

clean:
	-$(BIN)/citygrid db stop
	rm -rf var .venv
