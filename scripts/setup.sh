#!/usr/bin/env bash
# Idempotent set-up: Java 17 check, virtual environment with the pinned set,
# Delta jars resolved once into a cache. Re-running is cheap (stamp files).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if (3,10) <= sys.version_info[:2] < (3,12) else 1)'; then PY="$c"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "esmm: Python 3.10 or 3.11 is required (the pinned torch/petastorm set is verified on 3.11)." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "esmm setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.esmm-installed
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "esmm setup: installing the pinned dependency set (requirements.lock)"
  .venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# Delta jars: Maven into the cache when available, else Ivy through a first session.
mkdir -p "$ESMM_JARS_DIR"
DELTA=3.3.3
if [ ! -f "$ESMM_JARS_DIR/delta-spark_2.12-$DELTA.jar" ] || [ ! -f "$ESMM_JARS_DIR/delta-storage-$DELTA.jar" ]; then
  echo "esmm setup: fetching Delta $DELTA jars into $ESMM_JARS_DIR"
  if command -v mvn >/dev/null 2>&1; then
    for a in "io.delta:delta-spark_2.12:$DELTA" "io.delta:delta-storage:$DELTA"; do
      mvn -q dependency:copy -Dartifact="$a" -DoutputDirectory="$ESMM_JARS_DIR"
    done
  else
    .venv/bin/python - <<PYEOF
import glob, os, shutil
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession
b = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
configure_spark_with_delta_pip(b).getOrCreate().stop()
for j in glob.glob(os.path.expanduser("~/.ivy2/jars/io.delta_delta-*$DELTA.jar")):
    name = os.path.basename(j).split("_", 1)[1]
    shutil.copy(j, os.path.join(os.environ["ESMM_JARS_DIR"], name))
PYEOF
  fi
fi
echo "esmm setup: ok (JAVA_HOME=$JAVA_HOME)"
