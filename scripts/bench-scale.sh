#!/usr/bin/env bash
# bench-scale.sh: how dpsd's embedded store holds up as registrations pile
# up. Starts one dpsd node on a fresh data directory (SQLite, built-in hub
# linked), then registers new devices in chunks with `dpsd bench` and after
# each chunk prints the registrations so far, the chunk's rate and latency,
# the node's resident memory and the size of its data directory.
#
#   scripts/bench-scale.sh [TOTAL] [CHUNK] [TRANSPORT]
#   scripts/bench-scale.sh 1000000 100000 https     # docs/benchmarks.md
#
# Loopback only (127.0.9.81); everything it starts, it stops.
set -euo pipefail

total=${1:-100000}
chunk=${2:-10000}
transport=${3:-https}
addr=127.0.9.81
concurrency=${CONCURRENCY:-32}

cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/dpsd-scale.XXXXXX")
bin="$work/dpsd"
go build -o "$bin" ./cmd/dpsd
data="$work/data"

"$bin" serve --data-dir "$data" --hostname "$addr" --https-addr "$addr:18443" --mqtt-addr "$addr:18883" \
	--amqp-addr "$addr:15671" --throttle-per-source -1 --log-level warn >"$work/serve.log" 2>&1 &
pid=$!
cleanup() {
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 100); do
	[ -f "$data/info.json" ] && curl -skf "https://$addr:18443/healthz" >/dev/null && break
	sleep 0.2
done
"$bin" hub create scale-hub --link --data-dir "$data" >/dev/null

printf '%-13s %-15s %-9s %-9s %-9s %-10s %s\n' registrations "chunk reg/s" "p50 ms" "p99 ms" errors "RSS MiB" "data MiB"
done_count=0
while [ "$done_count" -lt "$total" ]; do
	n=$((total - done_count < chunk ? total - done_count : chunk))
	out=$("$bin" bench --data-dir "$data" --setup --group-id scale --registrations "$n" \
		--concurrency "$concurrency" --transport "$transport" --duration 0 -o json 2>>"$work/bench.log")
	done_count=$((done_count + n))
	rss=$(awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
	size=$(du -sm "$data" | cut -f1)
	# The JSON report, reduced to one line with sed alone (no jq needed).
	field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p" <<<"$out" | head -n 1; }
	printf '%-13s %-15.0f %-9.1f %-9.1f %-9s %-10s %s\n' "$done_count" "$(field registrationsPerSecond)" \
		"$(field p50)" "$(field p99)" "$(field failed)" "$rss" "$size"
done
