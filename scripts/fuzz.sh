#!/usr/bin/env bash
# Runs the fuzz targets of the wire decoders and parsers for a bounded time each
# (FUZZTIME, default 5s): every Fuzz* function of the packages listed.
# go test -fuzz takes one target per run, so they run one after another.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fuzztime="${FUZZTIME:-5s}"
packages=(./internal/amqp ./internal/tpm ./internal/eventhub ./internal/query ./internal/linkedhub ./internal/hub/azurehub ./internal/hub/builtinhub ./internal/issuer)

for pkg in "${packages[@]}"; do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		echo "== fuzz $pkg $target ($fuzztime)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
	done
done
