package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/server"
)

// envOr returns the environment variable's value, or def when unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func newServeCmd() *cobra.Command {
	var cfg server.Config
	var level, format string
	var grace time.Duration
	var skipUnhealthy bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the provisioning service (device API over HTTPS and MQTT, service API)",
		Long: `Run the provisioning service with embedded defaults: an SQLite store and a
local CA in the data directory, both created on first start. Every flag can
also be set with the environment variable named in its help.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(level, format)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Banner = cmd.OutOrStdout()
			cfg.ShutdownGrace = grace
			cfg.AllocateToUnhealthyHubs = !skipUnhealthy
			if grace <= 0 {
				cfg.ShutdownGrace = -1 // no wait
			}
			s, err := server.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return s.Serve(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", envOr("DPSD_DATA_DIR", "./dpsd-data"), "directory for the database, the local CA and info.json (DPSD_DATA_DIR)")
	f.StringVar(&cfg.HostName, "hostname", envOr("DPSD_HOSTNAME", "localhost"), "name or IP clients use to reach dpsd; goes into certificates and connection strings (DPSD_HOSTNAME)")
	f.StringVar(&cfg.HTTPSAddr, "https-addr", envOr("DPSD_HTTPS_ADDR", ":443"), "listen address of the device and service APIs over HTTPS (DPSD_HTTPS_ADDR)")
	f.StringVar(&cfg.MQTTAddr, "mqtt-addr", envOr("DPSD_MQTT_ADDR", ":8883"), "listen address of the device API over MQTT/TLS (DPSD_MQTT_ADDR)")
	f.StringVar(&cfg.AMQPAddr, "amqp-addr", envOr("DPSD_AMQP_ADDR", ":5671"), "listen address of the device API over AMQP 1.0/TLS (DPSD_AMQP_ADDR)")
	f.StringVar(&cfg.Store, "store", envOr("DPSD_STORE", "sqlite"), "sqlite (embedded, in the data dir) or a postgres:// URL shared by several nodes (DPSD_STORE)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert", envOr("DPSD_TLS_CERT", ""), "server certificate (PEM) instead of one from the local CA (DPSD_TLS_CERT)")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", envOr("DPSD_TLS_KEY", ""), "private key of --tls-cert (DPSD_TLS_KEY)")
	f.BoolVar(&cfg.PollFirst, "poll-first", envOr("DPSD_POLL_FIRST", "") == "true", "answer every register with \"assigning\" and let the device poll for the result, as Azure does, instead of returning a ready result at once (DPSD_POLL_FIRST=true)")
	f.DurationVar(&cfg.IssuedCertValidity, "issued-cert-validity", envDuration("DPSD_ISSUED_CERT_VALIDITY", 0), "how long certificates issued from devices' certificate signing requests last, e.g. 720h; 0 means 30 days (DPSD_ISSUED_CERT_VALIDITY)")
	f.IntVar(&cfg.CSRMinRSABits, "csr-min-rsa-bits", envInt("DPSD_CSR_MIN_RSA_BITS", 0), "smallest RSA key a device's certificate signing request may hold; 0 means 2048 (ECDSA P-256, P-384 and P-521 are always accepted) (DPSD_CSR_MIN_RSA_BITS)")
	f.StringVar(&cfg.AllocationPolicy, "allocation-policy", envOr("DPSD_ALLOCATION_POLICY", "hashed"), "default allocation policy for enrollments that set none: hashed, geoLatency or static (DPSD_ALLOCATION_POLICY)")
	f.StringVar(&cfg.GeoNetworks, "geo-networks", envOr("DPSD_GEO_NETWORKS", ""), "device networks and their nearest hub locations for geoLatency, e.g. \"10.1.0.0/16=westeurope,northeurope; 10.2.0.0/16=eastus\" (DPSD_GEO_NETWORKS)")
	f.StringSliceVar(&cfg.WebhookCAFiles, "webhook-ca-file", nil, "PEM file of a CA to trust for HTTPS allocation webhooks, beside the system roots (repeatable)")
	f.StringVar(&cfg.WebhookTargets, "webhook-targets", envOr("DPSD_WEBHOOK_TARGETS", "local"), "where custom allocation webhooks may be called: local (loopback and private allowed; link-local, cloud metadata and this node's listeners refused), public (only public addresses), or an allow list of CIDRs and host names, e.g. \"10.1.0.0/16,hooks.example.com\" (DPSD_WEBHOOK_TARGETS)")
	f.BoolVar(&cfg.WebhookClientCert, "webhook-client-cert", envOr("DPSD_WEBHOOK_CLIENT_CERT", "") == "true", "present a TLS client certificate from the local CA (common name: the ID scope) to HTTPS allocation webhooks that ask for one, for mutual TLS (DPSD_WEBHOOK_CLIENT_CERT=true)")
	f.IntVar(&cfg.WebhookMaxConcurrent, "webhook-max-concurrent", envInt("DPSD_WEBHOOK_MAX_CONCURRENT", 0), "custom allocation webhook calls in flight on this node; 0 means 256 (DPSD_WEBHOOK_MAX_CONCURRENT)")
	f.IntVar(&cfg.WebhookMaxConcurrentPerGroup, "webhook-max-concurrent-per-group", envInt("DPSD_WEBHOOK_MAX_CONCURRENT_PER_GROUP", 0), "custom allocation webhook calls in flight per enrollment group (individual enrollments: per webhook URL); 0 means 64 (DPSD_WEBHOOK_MAX_CONCURRENT_PER_GROUP)")
	f.StringVar(&cfg.DebugAddr, "debug-addr", envOr("DPSD_DEBUG_ADDR", ""), "serve Prometheus /metrics and /debug/pprof on this plain-HTTP address, e.g. 127.0.0.1:6060 (DPSD_DEBUG_ADDR)")
	f.DurationVar(&cfg.HubHealthInterval, "hub-health-interval", envDuration("DPSD_HUB_HEALTH_INTERVAL", 0), "how often this node checks every linked hub (a registry statistics call, or an in-process read for built-in hubs); 0 means 15s, a negative value turns checks off (DPSD_HUB_HEALTH_INTERVAL)")
	f.DurationVar(&cfg.HubHealthTimeout, "hub-health-timeout", envDuration("DPSD_HUB_HEALTH_TIMEOUT", 0), "bound of one hub health check; 0 means 5s (DPSD_HUB_HEALTH_TIMEOUT)")
	f.IntVar(&cfg.HubHealthFailures, "hub-health-failures", envInt("DPSD_HUB_HEALTH_FAILURES", 0), "failed checks in a row that make a linked hub unhealthy; 0 means 2 (DPSD_HUB_HEALTH_FAILURES)")
	f.BoolVar(&skipUnhealthy, "allocation-skip-unhealthy", envOr("DPSD_ALLOCATION_SKIP_UNHEALTHY", "true") != "false", "hashed and geoLatency allocation leave out unhealthy linked hubs while another candidate is healthy (DPSD_ALLOCATION_SKIP_UNHEALTHY=false keeps them)")
	f.DurationVar(&cfg.DoctorInterval, "doctor-interval", envDuration("DPSD_DOCTOR_INTERVAL", 0), "run the consistency check of 'dpsd doctor' this often, e.g. 1h; its counts go to the metrics (DPSD_DOCTOR_INTERVAL)")
	f.BoolVar(&cfg.DoctorRepair, "doctor-repair", envOr("DPSD_DOCTOR_REPAIR", "") == "true", "let the scheduled check repair what it finds, never pruning orphans (DPSD_DOCTOR_REPAIR=true)")
	f.IntVar(&cfg.HubEventHubPartitions, "hub-eventhub-partitions", envInt("DPSD_HUB_EVENTHUB_PARTITIONS", 0), "partitions of each built-in hub's Event Hubs-compatible endpoint, 1 to 32; devices are spread over them by a hash of their ids; 0 means 4 (DPSD_HUB_EVENTHUB_PARTITIONS)")
	f.IntVar(&cfg.MaxConns, "max-conns", envInt("DPSD_MAX_CONNS", 0), "cap on open connections across all listeners, built-in hubs' included; 0 means 10000 or 3/4 of the open-file limit if lower, -1 no cap (DPSD_MAX_CONNS)")
	f.IntVar(&cfg.HubTelemetryMessages, "hub-telemetry-messages", envInt("DPSD_HUB_TELEMETRY_MESSAGES", 0), "telemetry messages each built-in hub keeps, the oldest dropped first; 0 means 1000 (DPSD_HUB_TELEMETRY_MESSAGES)")
	f.IntVar(&cfg.HubTelemetryBytes, "hub-telemetry-bytes", envInt("DPSD_HUB_TELEMETRY_BYTES", 0), "bytes of telemetry each built-in hub keeps, the oldest dropped first; 0 means 64 MiB (DPSD_HUB_TELEMETRY_BYTES)")
	f.DurationVar(&cfg.HubTelemetryMaxAge, "hub-telemetry-max-age", envDuration("DPSD_HUB_TELEMETRY_MAX_AGE", 0), "drop built-in hub telemetry older than this, e.g. 24h; 0 keeps it until the count or bytes push it out (DPSD_HUB_TELEMETRY_MAX_AGE)")
	f.IntVar(&cfg.MaxConnsPerSource, "max-conns-per-source", envInt("DPSD_MAX_CONNS_PER_SOURCE", 0), "cap on open connections from one source address; 0 means 512, -1 no cap (DPSD_MAX_CONNS_PER_SOURCE)")
	f.Float64Var(&cfg.ThrottleRegister, "throttle-register", envFloat("DPSD_THROTTLE_REGISTER", 0), "registers allowed per registration id per second, in bursts of 20 s worth; 0 means 1, -1 no limit (DPSD_THROTTLE_REGISTER)")
	f.Float64Var(&cfg.ThrottleLookup, "throttle-lookup", envFloat("DPSD_THROTTLE_LOOKUP", 0), "status lookups allowed per registration id per second, in bursts of 10 s worth; 0 means 10, -1 no limit (DPSD_THROTTLE_LOOKUP)")
	f.Float64Var(&cfg.ThrottlePerSource, "throttle-per-source", envFloat("DPSD_THROTTLE_PER_SOURCE", 0), "device requests allowed per source address per second, in bursts of 2 s worth; 0 means 2000, -1 no limit (DPSD_THROTTLE_PER_SOURCE)")
	f.DurationVar(&grace, "shutdown-grace", envDuration("DPSD_SHUTDOWN_GRACE", server.DefaultShutdownGrace), "on SIGTERM, wait this long for registrations still allocating (a slow webhook), answering their polls, before handing them to the recovery path; 0 does not wait (DPSD_SHUTDOWN_GRACE)")
	f.StringVar(&level, "log-level", envOr("DPSD_LOG_LEVEL", "info"), "debug, info, warn or error (DPSD_LOG_LEVEL)")
	f.StringVar(&format, "log-format", envOr("DPSD_LOG_FORMAT", "text"), "text or json (DPSD_LOG_FORMAT)")
	return cmd
}

// envDuration is the duration in the environment variable name, or def
// when it is unset or not a duration.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// envInt is the integer in the environment variable name, or def when it
// is unset or not an integer.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

// envFloat is the number in the environment variable name, or def when
// it is unset or not a number.
func envFloat(name string, def float64) float64 {
	if n, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return n
	}
	return def
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func newInfoCmd() *cobra.Command {
	var dataDir, output string
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Print the ID scope, service connection string, CA file and endpoints of a dpsd data directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := server.ReadInfo(dataDir)
			if err != nil {
				return err
			}
			running, err := server.Running(dataDir)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switch output {
			case "json":
				return writeJSON(w, struct {
					*server.Info
					Running bool `json:"running"`
				}{info, running})
			case "table", "":
				state := "running"
				if !running {
					state = "stopped (what follows is from its last start; the addresses may change on the next)"
				}
				fmt.Fprintf(w, "State:                      %s\n", state)
				fmt.Fprintf(w, "ID scope:                   %s\n", info.IDScope)
				fmt.Fprintf(w, "Service connection string:  %s\n", info.ServiceConnectionString)
				fmt.Fprintf(w, "CA certificate:             %s\n", info.CACertFile)
				fmt.Fprintf(w, "HTTPS endpoint:             %s (listening on %s)\n", info.HTTPSEndpoint, info.HTTPSAddr)
				fmt.Fprintf(w, "MQTT endpoint:              %s (listening on %s)\n", info.MQTTEndpoint, info.MQTTAddr)
				if info.AMQPEndpoint != "" {
					fmt.Fprintf(w, "AMQP endpoint:              %s (listening on %s)\n", info.AMQPEndpoint, info.AMQPAddr)
				}
				return nil
			}
			return fmt.Errorf("-o %q: want table or json", output)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("DPSD_DATA_DIR", "./dpsd-data"), "data directory of the dpsd to describe (DPSD_DATA_DIR)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
