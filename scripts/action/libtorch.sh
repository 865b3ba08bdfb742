#!/usr/bin/env bash
# Step 2 of the GitHub Action: obtains libtorch the way the repository's own script does
# (pinned PyPI wheels, sha256 checked). A cache hit makes this a no-op.
# Reads INPUT_LIBTORCH, LIBTORCH_DIR, ACTION_PATH.
set -euo pipefail

flavor=()
if [ "${INPUT_LIBTORCH:-cpu}" = cuda ]; then flavor=(--cuda); fi
python3 "$ACTION_PATH/scripts/libtorch.py" --dest "$LIBTORCH_DIR" "${flavor[@]}" >/dev/null
