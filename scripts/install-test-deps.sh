#!/usr/bin/env bash
# Installs what the SDK conformance tests (test/e2e driving test/sdk) need:
#   - Node.js and npm, from Debian's packages, when `node` is not on PATH;
#   - the pinned npm packages of test/sdk (`npm ci`), when test/sdk/node_modules
#     is missing or older than test/sdk/package-lock.json;
#   - Apache Qpid Proton's Python binding (python3-qpid-proton, Debian's), the
#     independent AMQP client of test/e2e/proton_test.go, for /usr/bin/python3;
#   - Chromium and its driver (Debian's chromium and chromium-driver) and
#     Firefox ESR (Debian's firefox-esr), the browsers of the console tests
#     (test/console): nothing downloads one;
#   - swtpm (Debian's), the software TPM of the TPM attestation tests;
#   - dockerd (Debian's docker.io), which TestContainerImage starts privately
#     to build and run the image when no Docker daemon runs (as root only).
# Idempotent, and a fast no-op when everything is already in place.
# Needs root (or sudo) only for the apt-get step.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/test/sdk"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "need root to run: $*"
		return 1
	fi
}

if ! command -v node >/dev/null 2>&1; then
	log "node not found: installing nodejs and npm from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends nodejs npm ca-certificates >/dev/null
elif ! command -v npm >/dev/null 2>&1; then
	log "npm not found: installing it from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# Debian's python3 (not a python3 that may come first on PATH) with proton.
if ! /usr/bin/python3 -c 'import proton' >/dev/null 2>&1; then
	log "installing python3-qpid-proton from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends python3 python3-qpid-proton >/dev/null
fi

if ! command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
	log "installing dockerd from Debian packages (docker.io)"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
	log "installing chromium and chromium-driver from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

if [ ! -x /usr/bin/firefox-esr ]; then
	log "installing firefox-esr from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends firefox-esr >/dev/null
fi

if ! command -v swtpm >/dev/null 2>&1; then
	log "installing swtpm from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends swtpm >/dev/null
fi

# node --test with custom reporters needs Node 18.15 or newer.
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
	log "node $(node --version) is too old (need >= 18)"
	exit 1
fi

stamp="$sdk/node_modules/.package-lock.json"
if [ -f "$stamp" ] && [ ! "$sdk/package-lock.json" -nt "$stamp" ]; then
	exit 0
fi

log "installing test/sdk packages (npm ci)"
cd "$sdk"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
# --ignore-scripts: tss.js (under azure-iot-security-tpm) would build a native
# module it needs only for a local TPM device; the tests reach the TPM over TCP.
# npm ci rewrites node_modules/.package-lock.json; make sure its time is after
# the lockfile's so the check above holds next time.
touch "$stamp"
