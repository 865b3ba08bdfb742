#!/usr/bin/env bash
# Step 1 of the GitHub Action: decides what to install, as step outputs.
# Reads INPUT_LIBTORCH, ACTION_PATH; writes to $GITHUB_OUTPUT.
set -euo pipefail

libtorch=${INPUT_LIBTORCH:-cpu}
case "$libtorch" in
  cpu | cuda | system | none) ;;
  *)
    echo "::error title=modelci::input libtorch is \"$libtorch\"; expected cpu, cuda, system or none"
    exit 2
    ;;
esac

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) target=x86_64-unknown-linux-gnu ;;
  Linux-aarch64 | Linux-arm64) target=aarch64-unknown-linux-gnu ;;
  Darwin-arm64) target=aarch64-apple-darwin ;;
  *) target=unsupported ;;
esac

if command -v sha256sum >/dev/null 2>&1; then
  wheels=$(sha256sum "$ACTION_PATH/scripts/libtorch-wheels.txt" | cut -c1-16)
else
  wheels=$(shasum -a 256 "$ACTION_PATH/scripts/libtorch-wheels.txt" | cut -c1-16)
fi
home="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/modelci"
needs=false
if [ "$libtorch" = cpu ] || [ "$libtorch" = cuda ]; then needs=true; fi

{
  echo "target=$target"
  echo "needs-libtorch=$needs"
  echo "libtorch-dir=$home/libtorch-2.13.0-$libtorch"
  echo "libtorch-key=modelci-libtorch-2.13.0-$libtorch-$target-$wheels"
  echo "bin-dir=$home/bin"
} >> "$GITHUB_OUTPUT"
