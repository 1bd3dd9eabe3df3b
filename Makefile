# The two commands of the README: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
.PHONY: setup demo test test-fast lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@. scripts/env.sh && esmm demo $(ARGS)

# Two test processes (pytest-xdist), each test file whole in one of them (its module fixtures, such as
# the standalone cluster, built once): most of a test's time is one driver thread waiting on a JVM,
# so two share two cores well. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
test: setup
	@. scripts/env.sh && python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# Unit tests only (tests/unit): no JVM, no subprocess, no training loop; a few minutes at most.
test-fast: setup
	@. scripts/env.sh && python -m pytest tests/unit $(ARGS)

# ruff lint and format check (configured in pyproject.toml); `ruff format .` fixes the format.
lint: setup
	@. scripts/env.sh && ruff check . && ruff format --check .

# naive vs ESMM vs ESCM2 on generated logs; e.g. make bench ARGS="--size tiny --seeds 2"
bench: setup
	@. scripts/env.sh && esmm bench quality $(ARGS)

clean:
	rm -rf lakehouse artifacts .pytest_cache
