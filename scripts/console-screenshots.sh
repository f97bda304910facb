#!/usr/bin/env bash
# Regenerates the console's screenshots in docs/console/ by running the
# browser test (test/console) against a fresh "dpsd serve", with Debian's
# Chromium (scripts/install-test-deps.sh installs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="$PWD/docs/console"
mkdir -p "$out"
rm -f "$out"/*.png
DPSD_CONSOLE_SCREENSHOTS="$out" go test -count=1 -run '^TestConsole' ./test/console/
ls "$out"
