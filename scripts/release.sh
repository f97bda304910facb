#!/usr/bin/env bash
# Builds release binaries of dpsd for every supported platform into dist/:
# static (no cgo), trimmed paths, stamped with the version and commit that
# "dpsd --version" prints. VERSION defaults to "git describe".
#
#   scripts/release.sh                 # every platform
#   scripts/release.sh linux/amd64     # some of them
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
commit="${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
platforms=("$@")
if [ ${#platforms[@]} -eq 0 ]; then
	platforms=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64)
fi
# The one build command, shared with the Dockerfile (which passes the same
# flags): keep them in step.
ldflags="-s -w -X github.com/dpsd/dpsd/internal/cli.buildVersion=${version} -X github.com/dpsd/dpsd/internal/cli.buildCommit=${commit}"

mkdir -p dist
for p in "${platforms[@]}"; do
	os="${p%/*}" arch="${p#*/}"
	out="dist/dpsd-${version}-${os}-${arch}"
	[ "$os" = windows ] && out="${out}.exe"
	echo "== ${p} → ${out}"
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" go build -trimpath -ldflags "$ldflags" -o "$out" ./cmd/dpsd
done
(cd dist && sha256sum dpsd-"${version}"-* > "SHA256SUMS-${version}")
echo "== dist/SHA256SUMS-${version}"
