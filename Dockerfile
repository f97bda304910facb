# dpsd in a container: a static binary on an empty base image, run as a
# non-root user, with its data (embedded database, local CA, info.json) on
# the /data volume. See README.md, "Running in a container".
#
#   docker build --build-arg VERSION=$(git describe --always) --build-arg COMMIT=$(git rev-parse --short=12 HEAD) -t dpsd .

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
# The build scripts/release.sh runs: static (no cgo), trimmed, stamped.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/dpsd/dpsd/internal/cli.buildVersion=${VERSION} -X github.com/dpsd/dpsd/internal/cli.buildCommit=${COMMIT}" -o /out/dpsd ./cmd/dpsd
# The data directory, owned by the user dpsd runs as; dpsd keeps it 0700.
RUN mkdir -p /out/data && chmod 0700 /out/data

FROM scratch
# CA roots for HTTPS webhooks and linked Azure IoT hubs.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/dpsd /dpsd
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV DPSD_DATA_DIR=/data
VOLUME ["/data"]
# HTTPS (device and service APIs, MQTT and AMQP over WebSockets), MQTT, AMQP.
# A non-root user may bind them because Docker (20.10 and later) lets
# containers bind ports from 0 (net.ipv4.ip_unprivileged_port_start=0);
# elsewhere give the process CAP_NET_BIND_SERVICE or listen above 1024.
EXPOSE 443 8883 5671
ENTRYPOINT ["/dpsd"]
CMD ["serve"]
