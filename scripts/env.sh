# Sourced by the Makefile and .ci/run: pins JAVA_HOME to a Java 17 (Spark 3.5
# supports 8/11/17; a newer default JDK breaks it) and puts the venv first.
_esmm_java17() {
  if [ -n "${JAVA_HOME:-}" ] && "$JAVA_HOME/bin/java" -version 2>&1 | grep -q 'version "17'; then
    echo "$JAVA_HOME"; return 0
  fi
  for d in /usr/lib/jvm/java-17-openjdk-* /usr/lib/jvm/temurin-17-* /usr/lib/jvm/*17*; do
    if [ -x "$d/bin/java" ] && "$d/bin/java" -version 2>&1 | grep -q 'version "17'; then
      echo "$d"; return 0
    fi
  done
  if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -q 'version "17'; then
    dirname "$(dirname "$(readlink -f "$(command -v java)")")"; return 0
  fi
  return 1
}
if ! ESMM_JAVA_HOME="$(_esmm_java17)"; then
  echo "esmm: Java 17 is required by Spark 3.5 and was not found." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jdk-headless" >&2
  echo "  macOS:         brew install openjdk@17" >&2
  echo "  or point JAVA_HOME at an installed JDK 17." >&2
  return 1 2>/dev/null || exit 1
fi
export JAVA_HOME="$ESMM_JAVA_HOME"
export PATH="$JAVA_HOME/bin:$PATH"
export ESMM_JARS_DIR="${ESMM_JARS_DIR:-$HOME/.cache/esmm/jars}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(pwd)/.venv/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$(pwd)/.venv/bin/python}"
export PATH="$(pwd)/.venv/bin:$PATH"
# Local runs talk to themselves only: bind Spark to loopback, not the first NIC.
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
