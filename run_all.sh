#!/usr/bin/env bash
# The main job: all 21 models of the paper's grid for one profile and dataset, then the summary table.
#
#   ./run_all.sh [--profile quick|paper] [--data DIR] [--out DIR] [any other `python -m benchmark` option]
#   ./run_all.sh --test [pytest options]      the test suite, in the same virtual environment
#
# Creates ./.venv on first use (pip install -e .), uses ../shared/weights/keras as the Keras weights cache when it
# exists and KERAS_HOME is not set, runs `python -m benchmark --backbone all --depth both`, and writes
# OUT/summary.csv and OUT/summary.md (OUT defaults to results/runs/<profile>_<data name>, not tracked by git).
set -euo pipefail
cd "$(dirname "$0")"

mode=grid
if [ "${1:-}" = "--test" ]; then mode=test; shift; fi
profile=quick
data=""
out=""
rest=()
while [ "$mode" = grid ] && [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) rest+=("$1"); shift ;;
  esac
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv (first run only)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import benchmark, data_prep, keras, tensorflow" 2>/dev/null \
   || [ setup.cfg -nt .venv/.installed ]; then
  echo "installing the benchmark into .venv"
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch .venv/.installed
fi

if [ -z "${KERAS_HOME:-}" ] && [ -d ../shared/weights/keras ]; then
  export KERAS_HOME="$(cd ../shared/weights/keras && pwd)"
fi

if [ "$mode" = test ]; then
  exec .venv/bin/python -m pytest "$@"
fi

if [ -z "$out" ]; then
  name=synthetic
  [ -n "$data" ] && name=$(basename "$data")
  out="results/runs/${profile}_${name}"
fi
args=(--backbone all --depth both --profile "$profile" --out "$out")
[ -n "$data" ] && args+=(--data "$data")

start=$(date +%s)
set +e
.venv/bin/python -m benchmark "${args[@]}" "${rest[@]+"${rest[@]}"}"
status=$?
set -e
echo "wall time: $(( $(date +%s) - start )) s"
[ -f "$out/summary.md" ] && cat "$out/summary.md"
exit $status
