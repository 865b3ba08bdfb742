#!/usr/bin/env bash
# Step 3 of the GitHub Action: installs the modelci binary for this runner.
#
# From the release of the action's own repository (or MODELCI_RELEASE_URL, for a mirror),
# checked against the release's SHA256SUMS; when the release has no archive for this runner,
# built from the action's source with cargo. A checksum mismatch is an error, never a reason
# to fall back. MODELCI_BINARY, when set, names a binary to use as it is.
# Reads INPUT_VERSION, INPUT_LIBTORCH, TARGET, BIN_DIR, LIBTORCH_DIR, ACTION_PATH,
# ACTION_REPOSITORY, GITHUB_SERVER_URL; writes binary= to $GITHUB_OUTPUT.
set -euo pipefail

mkdir -p "$BIN_DIR"
binary="$BIN_DIR/modelci"
suffix=""
if [ "${INPUT_LIBTORCH:-cpu}" = none ]; then suffix="-notorch"; fi
archive="modelci-$TARGET$suffix.tar.gz"
version=${INPUT_VERSION:-latest}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

build_from_source() {
  echo "modelci: building from source ($ACTION_PATH)" >&2
  features=()
  if [ -n "$suffix" ]; then features=(--no-default-features); fi
  if [ -d "$LIBTORCH_DIR" ]; then export LIBTORCH="$LIBTORCH_DIR"; fi
  cargo build --release --locked --manifest-path "$ACTION_PATH/Cargo.toml" "${features[@]}"
  cp "$ACTION_PATH/target/release/modelci" "$binary"
}

if [ -n "${MODELCI_BINARY:-}" ]; then
  cp "$MODELCI_BINARY" "$binary"
elif [ "$version" = source ] || [ "$TARGET" = unsupported ]; then
  build_from_source
else
  base=${MODELCI_RELEASE_URL:-"$GITHUB_SERVER_URL/$ACTION_REPOSITORY/releases"}
  if [ "$version" = latest ]; then url="$base/latest/download"; else url="$base/download/v${version#v}"; fi
  work=$(mktemp -d)
  if curl -fsSL --retry 3 -o "$work/$archive" "$url/$archive" \
    && curl -fsSL --retry 3 -o "$work/SHA256SUMS" "$url/SHA256SUMS"; then
    expected=$(awk -v name="$archive" '$2 == name || $2 == "*" name { print $1 }' "$work/SHA256SUMS")
    actual=$(sha256 "$work/$archive")
    if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
      echo "::error title=modelci::$archive has sha256 $actual, but SHA256SUMS lists ${expected:-nothing}; refusing to install it"
      exit 1
    fi
    tar -xzf "$work/$archive" -C "$work"
    cp "$work/modelci" "$binary"
  else
    echo "modelci: no release archive $archive at $url" >&2
    build_from_source
  fi
  rm -rf "$work"
fi
chmod +x "$binary"
echo "binary=$binary" >> "$GITHUB_OUTPUT"
