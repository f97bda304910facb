package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocate"
)

// Validate checks cfg before anything is opened or bound, so that a
// mistake costs no half-started node, and fills in the defaults: the
// default logger and the host name "localhost". It reports every mistake
// it finds at once. Start calls it.
func (cfg *Config) Validate() error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HostName == "" {
		cfg.HostName = "localhost"
	}
	var errs []error
	if cfg.DataDir == "" {
		errs = append(errs, errors.New("--data-dir: a data directory is required"))
	}
	for _, a := range []struct{ flag, addr string }{
		{"--https-addr", cfg.HTTPSAddr}, {"--mqtt-addr", cfg.MQTTAddr}, {"--debug-addr", cfg.DebugAddr},
	} {
		if a.addr == "" && a.flag == "--debug-addr" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port, e.g. 127.0.0.1:8443", a.flag, a.addr))
		}
	}
	if cfg.IssuedCertValidity < 0 || (cfg.IssuedCertValidity > 0 && cfg.IssuedCertValidity < time.Hour) {
		errs = append(errs, fmt.Errorf("--issued-cert-validity %s: want at least 1h", cfg.IssuedCertValidity))
	}
	if cfg.CSRMinRSABits < 0 || (cfg.CSRMinRSABits > 0 && cfg.CSRMinRSABits < 1024) || cfg.CSRMinRSABits > 8192 {
		errs = append(errs, fmt.Errorf("--csr-min-rsa-bits %d: want 1024 to 8192", cfg.CSRMinRSABits))
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key: give both or neither"))
	}
	if _, err := storeKind(cfg.Store); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := allocationSettings(cfg); err != nil {
		errs = append(errs, err)
	}
	if _, err := allocate.ParseTargets(cfg.WebhookTargets); err != nil {
		errs = append(errs, fmt.Errorf("--webhook-targets: %w", err))
	}
	return errors.Join(errs...)
}

// allocationSettings reads the instance's default allocation policy and the
// network map of geoLatency from cfg.
func allocationSettings(cfg *Config) (policy string, nets []allocate.NetworkLocation, err error) {
	policy = dps.AllocationHashed
	switch strings.ToLower(cfg.AllocationPolicy) {
	case "", "hashed":
	case "geolatency":
		policy = dps.AllocationGeoLatency
	case "static":
		policy = dps.AllocationStatic
	default:
		return "", nil, fmt.Errorf("--allocation-policy %q: want hashed, geoLatency or static (custom is per enrollment)", cfg.AllocationPolicy)
	}
	if cfg.GeoNetworks != "" {
		if nets, err = allocate.ParseNetworkMap(cfg.GeoNetworks); err != nil {
			return "", nil, fmt.Errorf("--geo-networks: %w", err)
		}
	}
	return policy, nets, nil
}
