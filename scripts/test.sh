#!/usr/bin/env bash
# Runs every test of dpsd: static checks, the Go tests (unit, store
# conformance, engine, transports) and the conformance tests that drive a
# real "dpsd serve" with the official Azure SDKs for Node.js.
#
# It first installs what the tests need (Node.js and the pinned npm
# packages), so it works on a fresh Debian machine with Go. The SDK tests
# bind ports 443 and 8883 on their own loopback addresses, so run it as root
# (CI does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh
# The PostgreSQL store and multi-node tests need a server: use the one on
# 127.0.0.1:5432, or install and start one (Debian's packages).
DPSD_TEST_POSTGRES="$(bash scripts/ensure-postgres.sh)"
export DPSD_TEST_POSTGRES

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './test/sdk/node_modules/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" $unformatted >&2
	exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== go test"
go test -count=1 -timeout 20m "$@" ./...
echo "== fuzz (bounded)"
bash scripts/fuzz.sh
