#!/usr/bin/env bash
# Puts the native Claude Code CLI where Berth's tests look for it, outside the
# clone: ${BERTH_AGENT_CACHE:-$HOME/.cache/berth}/claude-code/claude, with a
# VERSION file beside it. Prints that path last.
#
# The CLI comes from PyPI: the manylinux x86_64 wheel of claude-agent-sdk
# bundles it as claude_agent_sdk/_bundled/claude (glibc only, ~400 MB).
# A wheel already in <cache>/wheels is reused; otherwise pip downloads one
# (pin it with CLAUDE_AGENT_SDK_VERSION=0.2.189, say). Safe to run again:
# a binary that answers --version is left alone.
set -euo pipefail

cache="${BERTH_AGENT_CACHE:-$HOME/.cache/berth}"
dir="$cache/claude-code"
bin="$dir/claude"
wheels="$cache/wheels"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi

mkdir -p "$dir" "$wheels"
pick_wheel() {
    local pattern="claude_agent_sdk-${CLAUDE_AGENT_SDK_VERSION:-*}-*manylinux*x86_64.whl"
    # Newest version first.
    find "$wheels" -maxdepth 1 -name "$pattern" -printf '%f\n' 2>/dev/null | sort -V | tail -n 1
}
wheel="$(pick_wheel)"
if [[ -z "$wheel" ]]; then
    spec="claude-agent-sdk${CLAUDE_AGENT_SDK_VERSION:+==$CLAUDE_AGENT_SDK_VERSION}"
    echo "downloading $spec into $wheels" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --python-version 3.11 -d "$wheels" "$spec" >&2
    wheel="$(pick_wheel)"
    [[ -n "$wheel" ]] || { echo "pip left no claude-agent-sdk wheel in $wheels" >&2; exit 1; }
fi

echo "extracting the CLI from $wheels/$wheel" >&2
partial="$bin.partial.$$"
trap 'rm -f "$partial"' EXIT
python3 - "$wheels/$wheel" "$partial" <<'PY'
import shutil
import sys
import zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive, archive.open("claude_agent_sdk/_bundled/claude") as source, open(target, "wb") as out:
    shutil.copyfileobj(source, out, 1 << 20)
PY
chmod 0755 "$partial"
version="$("$partial" --version)" || { echo "the extracted CLI does not run: $partial" >&2; exit 1; }
mv -f "$partial" "$bin"
trap - EXIT
printf '%s\nwheel %s\n' "$version" "$wheel" > "$dir/VERSION"
echo "claude $version" >&2
echo "$bin"
