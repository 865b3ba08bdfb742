#!/usr/bin/env bash
# Step 4 of the GitHub Action: runs modelci. Inputs arrive as environment variables, never
# as shell text. modelci itself sets the step outputs (verdict, report-path, metrics-path),
# the annotations and the job summary.
# Reads MODELCI, LIBTORCH_DIR, INPUT_COMMAND, INPUT_CONFIG, INPUT_BASELINE, INPUT_METRICS,
# INPUT_REPORT, INPUT_COMMENT_LABEL, INPUT_FAIL_ON_REGRESSION, INPUT_UPDATE_BASELINE,
# GITHUB_TOKEN.
set -euo pipefail

command=${INPUT_COMMAND:-run}
arguments=("$command")
case "$command" in
  run | gate)
    if [ -n "${INPUT_CONFIG:-}" ]; then arguments+=(--config "$INPUT_CONFIG"); fi
    if [ -n "${INPUT_BASELINE:-}" ]; then arguments+=(--baseline "$INPUT_BASELINE"); fi
    if [ "$command" = gate ]; then arguments+=(--metrics "${INPUT_METRICS:-modelci-output}"); fi
    ;;
  comment) arguments+=(--report "${INPUT_REPORT:-modelci-output/report.md}") ;;
  doctor) ;;
  *)
    echo "::error title=modelci::input command is \"$command\"; expected run, gate, comment or doctor"
    exit 2
    ;;
esac
if [ "$command" != doctor ]; then arguments+=(--label "${INPUT_COMMENT_LABEL:-default}"); fi
if [ "$command" = run ] && [ "${INPUT_UPDATE_BASELINE:-false}" = true ]; then
  arguments+=(--update-baseline)
fi

# The documented wrapper: the binary finds libtorch through the library path, the one the
# action downloaded or, with libtorch: system, the runner's own LIBTORCH.
lib="${LIBTORCH_DIR:-}/lib"
if [ ! -d "$lib" ] && [ -n "${LIBTORCH:-}" ]; then lib="$LIBTORCH/lib"; fi
if [ -d "$lib" ]; then
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export DYLD_LIBRARY_PATH="$lib${DYLD_LIBRARY_PATH:+:$DYLD_LIBRARY_PATH}"
fi

status=0
"$MODELCI" "${arguments[@]}" || status=$?
if [ "$status" = 1 ] && [ "${INPUT_FAIL_ON_REGRESSION:-true}" = false ]; then
  echo "::notice title=modelci::regression found; not failing the step (fail-on-regression: false)"
  exit 0
fi
exit "$status"
