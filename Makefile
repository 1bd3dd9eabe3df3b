# The two commands of the README: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@. scripts/env.sh && esmm demo $(ARGS)

test: setup
	@. scripts/env.sh && python -m pytest $(ARGS)

test-fast: setup
	@. scripts/env.sh && python -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf lakehouse artifacts .pytest_cache
