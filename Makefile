# The two commands of the README: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@. scripts/env.sh && esmm demo $(ARGS)

test: setup
	@. scripts/env.sh && python -m pytest $(ARGS)

# Unit tests only: no end-to-end (slow) and no whole-job / multi-process (integration) tests.
test-fast: setup
	@. scripts/env.sh && python -m pytest -m "not slow and not integration" $(ARGS)

# naive vs ESMM vs ESCM2 on generated logs; e.g. make bench ARGS="--size tiny --seeds 2"
bench: setup
	@. scripts/env.sh && esmm bench quality $(ARGS)

clean:
	rm -rf lakehouse artifacts .pytest_cache
