#!/usr/bin/env bash
# The GPU check in one call, for a fresh GPU machine without idx2numpy or a network:
#   bash scripts/gpu_check.sh OUTDIR [gpu_check.py options]
# Installs the carried wheels (.carry/wheels/: idx2numpy, six, pooch, platformdirs) into /tmp/site
# when one of them is missing, runs the package from the working tree (PYTHONPATH=.), data from
# .carry/fashion-mnist/ and .carry/mnist/ (see docs/gpu.md, "The prepared GPU check").
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import idx2numpy, six, pooch, platformdirs" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl \
    || echo "gpu_check.sh: could not install the carried wheels (.carry/wheels/)" >&2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
