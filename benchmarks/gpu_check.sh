#!/bin/sh
# The GPU report (benchmarks/gpu_check.py); needs torch and the repository only, no Java or Spark.
cd "$(dirname "$0")/.." && PYTHONPATH="$PWD" exec "$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)" benchmarks/gpu_check.py "$@"
