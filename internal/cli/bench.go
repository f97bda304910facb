package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/client/tpm"
	"github.com/dpsd/dpsd/internal/bench"
	"github.com/dpsd/dpsd/internal/bench/floor"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/sas"
)

func newBenchCmd() *cobra.Command {
	var (
		df                                  deviceFlags
		o                                   bench.Options
		groupKey, payload, connStr, groupID string
		hubs                                []string
		setup, withFloor, csr               bool
		tpmAddrs                            []string
		issuer                              string
		rounds                              int
		timeout, maxPollWait                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test a provisioning service with many simulated devices of one enrollment group",
		Long: `Provision --registrations distinct simulated devices (registration IDs
--id-prefix followed by a sequence number) of one symmetric-key enrollment
group, --concurrency at a time, and report registrations per second, latency
percentiles of the successful registrations, and errors by kind.

Transports: https (keep-alive connections shared by all registrations),
https-newconn (a new TLS connection per request), mqtt, mqtt-ws, amqp and
amqp-ws (one connection per registration, as devices do).

The group key comes from --group-key, or --setup creates (or reuses) the
enrollment group --group-id through the service API first.

With --csr every device also sends a certificate signing request (a new
P-256 key each, made before its registration is timed) and must receive an
issued certificate. With --tpm (repeatable) the devices attest with those
TPMs instead, one device per TPM (registration IDs --id-prefix, "tpm-" and
the TPM's index), over https, amqp or amqp-ws; registrations beyond the
number of TPMs register the same devices again. --setup enrolls each TPM.

Load goes only to loopback addresses (127.0.0.0/8, ::1) unless
--allow-remote is given.

With --floor, the same load also goes to a do-nothing provisioning service
that this command starts as a process of its own, as a server is: dpsd's
own transports, with the target's CA and host name, answering every device
of the group "assigned" after checking its SAS token, storing nothing. The
runs alternate, --rounds of each, and the report gives both, their ratio
(what dpsd costs over the protocol itself on this machine) and the floor
process's CPU time per registration. It needs the target's --data-dir (for
its CA).`,
		Example: `  dpsd bench --data-dir ./dpsd-data --setup --registrations 2000 --concurrency 50 --transport https
  dpsd bench --data-dir ./dpsd-data --setup --csr --registrations 200 --transport mqtt
  dpsd bench --data-dir ./dpsd-data --setup --tpm tcp:127.0.0.1:2321 --tpm tcp:127.0.0.1:2331 --registrations 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := outputJSON(cmd)
			if err != nil {
				return err
			}
			if len(tpmAddrs) == 0 && setup == (groupKey != "") {
				return errors.New("give exactly one of --group-key and --setup")
			}
			if len(tpmAddrs) > 0 && groupKey != "" {
				return errors.New("--tpm devices attest with their TPMs: drop --group-key")
			}
			o.CSR = csr
			t, err := df.resolve()
			if err != nil {
				return err
			}
			tr := device.TransportHTTPS
			switch o.Transport {
			case bench.MQTT:
				tr = device.TransportMQTT
			case bench.MQTTWS:
				tr = device.TransportMQTTWS
			case bench.AMQP:
				tr = device.TransportAMQP
			case bench.AMQPWS:
				tr = device.TransportAMQPWS
			}
			o.Device = t.config(tr)
			o.Device.Timeout = timeout
			o.Device.MaxPollWait = maxPollWait
			if payload != "" {
				if !json.Valid([]byte(payload)) {
					return errors.New("--payload is not valid JSON")
				}
				o.Device.Payload = json.RawMessage(payload)
			}
			ctx := cmd.Context()
			for _, a := range tpmAddrs {
				dev, err := tpm.Open(a)
				if err != nil {
					return fmt.Errorf("--tpm %s: %w", a, err)
				}
				defer dev.Close()
				o.TPMs = append(o.TPMs, dev)
			}
			issuingCA := ""
			if csr {
				issuingCA = issuer
			}
			if len(o.TPMs) > 0 {
				if err := o.Validate(ctx); err != nil {
					return err
				}
				if setup {
					svc, err := benchService(ctx, t, connStr, o.AllowRemote)
					if err != nil {
						return err
					}
					if err := bench.SetupTPMs(ctx, svc, o.IDPrefix, o.TPMs, bench.GroupSpec{IoTHubs: hubs, IssuingCA: issuingCA}); err != nil {
						return err
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "%d TPM enrollments ready (%s...)\n", len(o.TPMs), bench.TPMRegistrationID(o.IDPrefix, 0))
				}
			} else if setup {
				// Check the target before the setup request, which goes
				// to the same service.
				o.Device.GroupKey = "eA=="
				if err := o.Validate(ctx); err != nil {
					return err
				}
				svc, err := benchService(ctx, t, connStr, o.AllowRemote)
				if err != nil {
					return err
				}
				groupKey, err = bench.SetupGroup(ctx, svc, bench.GroupSpec{ID: groupID, IoTHubs: hubs, IssuingCA: issuingCA})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "enrollment group %q ready\n", groupID)
			}
			o.Device.GroupKey = groupKey
			if !asJSON {
				o.Progress = cmd.ErrOrStderr()
			}
			if withFloor && (len(o.TPMs) > 0 || o.CSR) {
				return errors.New("--floor compares symmetric-key registrations only: drop --tpm and --csr")
			}
			if withFloor {
				return runFloorComparison(cmd, o, t, df.dataDir, rounds, hubs, asJSON)
			}
			res, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				err = writeJSON(cmd.OutOrStdout(), benchJSON(res))
			} else {
				res.Print(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if res.Failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	df.register(f)
	f.IntVar(&o.Registrations, "registrations", 100, "number of devices to provision (at most "+strconv.Itoa(bench.MaxRegistrations)+")")
	f.IntVar(&o.Concurrency, "concurrency", 10, "registrations in flight at once")
	f.StringVar(&o.Transport, "transport", bench.HTTPS, "https, https-newconn, mqtt, mqtt-ws, amqp or amqp-ws")
	f.DurationVar(&o.Duration, "duration", 10*time.Minute, "stop the run after this long (0: no limit)")
	f.StringVar(&o.IDPrefix, "id-prefix", "", `registration ID prefix (default "bench-<time>-", new devices every run)`)
	f.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	f.StringVar(&groupKey, "group-key", "", "base64 primary key of an existing symmetric-key enrollment group")
	f.BoolVar(&setup, "setup", false, "create (or reuse) the enrollment group --group-id through the service API first")
	f.StringVar(&groupID, "group-id", "dpsd-bench", "enrollment group --setup creates")
	f.StringSliceVar(&hubs, "hub", nil, "IoT hub host name the --setup group allocates to (repeatable; default: the service's linked hubs)")
	f.StringVar(&connStr, "connection-string", "", "service connection string for --setup (default: env "+envConnectionString+", else from --data-dir)")
	f.StringVar(&payload, "payload", "", "custom JSON payload every device sends")
	f.DurationVar(&timeout, "timeout", time.Minute, "give up on one registration after this long")
	f.DurationVar(&maxPollWait, "max-poll-wait", 0, "poll sooner than the service's Retry-After, at most after this long (0: honour Retry-After)")
	f.BoolVar(&withFloor, "floor", false, "also run the load against a do-nothing service in a process of its own, alternating, and report the ratio")
	f.IntVar(&rounds, "rounds", 3, "with --floor: rounds against each")
	f.StringSliceVar(&tpmAddrs, "tpm", nil, "attest with this TPM instead of a group key (repeatable, one device per TPM): a device file or unix:PATH / tcp:HOST:PORT of a software TPM (swtpm); --setup enrolls each; https, amqp and amqp-ws")
	f.BoolVar(&csr, "csr", false, "every device sends a certificate signing request and must receive an issued certificate; --setup names --issuing-ca in the enrollments")
	f.StringVar(&issuer, "issuing-ca", "local", "with --csr --setup: the issuing CA the enrollments name")
	f.StringP("output", "o", formatTable, "output format: table or json")
	cmd.PreRun = func(*cobra.Command, []string) {
		if o.IDPrefix == "" {
			o.IDPrefix = "bench-" + strconv.FormatInt(time.Now().Unix(), 36) + "-"
		}
	}
	return cmd
}

// floorServeCmd names the hidden command that bench --floor runs its floor
// with. It sits at the top level, not under bench, so that bench stays a
// command without subcommands (whose unknown arguments are errors of
// their own).
const floorServeCmd = "bench-floor"

// newFloorServeCmd is the child side of --floor: a process of its own, as
// a real server is, that takes its options on standard input and serves
// until that ends.
func newFloorServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:    floorServeCmd,
		Short:  "Serve the do-nothing provisioning service of bench --floor (started by it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return floor.ServeProcess(cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}

// benchService is the service API client --setup creates the benchmark's
// enrollments with.
func benchService(ctx context.Context, t *deviceTarget, connStr string, allowRemote bool) (*service.Client, error) {
	if connStr == "" {
		connStr = os.Getenv(envConnectionString)
	}
	if connStr == "" && t.info != nil {
		connStr = t.info.ServiceConnectionString
	}
	if connStr == "" {
		return nil, errors.New("--setup needs the service connection string: --connection-string, " + envConnectionString + " or --data-dir")
	}
	cs, err := sas.ParseConnectionString(connStr)
	if err != nil {
		return nil, err
	}
	var opts []service.Option
	dial := ""
	if t.info != nil && sameHost(connStr, t.info.ServiceConnectionString) {
		dial = dialable(t.info.HTTPSAddr)
		if t.info.CACertFile != "" {
			opts = append(opts, service.WithCAFile(t.info.CACertFile))
		}
	}
	if t.roots != nil {
		opts = append(opts, service.WithCAPool(t.roots))
	}
	if dial != "" {
		opts = append(opts, service.WithDialAddr(dial))
	} else {
		dial = cs.HostName
		if _, _, err := net.SplitHostPort(dial); err != nil {
			dial = net.JoinHostPort(dial, "443")
		}
	}
	if !allowRemote {
		if err := bench.CheckLoopback(ctx, dial); err != nil {
			return nil, err
		}
	}
	return service.New(connStr, opts...)
}

// runFloorComparison starts the floor on the target's CA and host name and
// runs alternating rounds against both.
func runFloorComparison(cmd *cobra.Command, o bench.Options, t *deviceTarget, dataDir string, rounds int, hubs []string, asJSON bool) error {
	if t.info == nil || dataDir == "" {
		return errors.New("--floor needs the target's --data-dir: the floor serves a certificate from its CA")
	}
	if o.AllowRemote {
		return errors.New("--floor measures the machine it runs on: the target must be a loopback address")
	}
	ca, err := localca.LoadOrCreate(filepath.Join(dataDir, "tls"))
	if err != nil {
		return err
	}
	// A certificate of its own from the same CA, so the target's files
	// stay as they are; the same key type makes the same TLS work.
	cert, err := ca.ServerCertificate("bench-floor", []string{t.host})
	if err != nil {
		return err
	}
	key, err := base64.StdEncoding.DecodeString(o.Device.GroupKey)
	if err != nil {
		return fmt.Errorf("group key: %w", err)
	}
	ip := "127.0.0.1"
	if h, _, err := net.SplitHostPort(dialable(t.info.HTTPSAddr)); err == nil && net.ParseIP(h) != nil {
		ip = h
	}
	hub := "floor-hub.azure-devices.net"
	if len(hubs) > 0 {
		hub = hubs[0]
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--floor runs the floor as a process of this program: %w", err)
	}
	fl, err := floor.StartProcess(cmd.Context(), exe, []string{floorServeCmd}, floor.ProcessOptions{
		IP:          ip,
		Certificate: cert,
		IDScope:     t.idScope,
		GroupKey:    key,
		Hub:         hub,
	})
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_, _ = fl.Close()
		}
	}()
	fo := o
	switch o.Transport {
	case bench.MQTT:
		fo.Device.DialAddr = fl.MQTTAddr()
	case bench.AMQP:
		fo.Device.DialAddr = fl.AMQPAddr()
	default:
		fo.Device.DialAddr = fl.HTTPSAddr()
	}
	c, err := bench.Compare(cmd.Context(), o, fo, rounds)
	if err != nil {
		return err
	}
	closed = true
	if c.FloorCPU, err = fl.Close(); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	if asJSON {
		target, fl := make([]any, len(c.Target)), make([]any, len(c.Floor))
		for i := range c.Target {
			target[i], fl[i] = benchJSON(c.Target[i]), benchJSON(c.Floor[i])
		}
		err = writeJSON(cmd.OutOrStdout(), map[string]any{
			"dpsd": target, "floor": fl, "ratio": c.Ratio(),
			"floorCpuPerRegistrationUs": c.FloorCPUPerRegistration().Microseconds(),
		})
	} else {
		c.Print(cmd.OutOrStdout())
	}
	if err != nil {
		return err
	}
	if c.Failed() > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// benchJSON is the -o json form of a result, durations in milliseconds.
func benchJSON(r *bench.Result) any {
	msf := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	l := r.Latency
	return struct {
		Transport   string             `json:"transport"`
		Requested   int                `json:"requested"`
		Succeeded   int                `json:"succeeded"`
		Failed      int                `json:"failed"`
		Cancelled   int                `json:"cancelled"`
		ElapsedMs   float64            `json:"elapsedMs"`
		PerSecond   float64            `json:"registrationsPerSecond"`
		LatencyMs   map[string]float64 `json:"latencyMs"`
		Errors      map[string]int     `json:"errors"`
		ErrorSample map[string]string  `json:"errorSamples"`
	}{
		r.Transport, r.Requested, r.Succeeded, r.Failed, r.Cancelled, msf(r.Elapsed), r.Rate(),
		map[string]float64{"min": msf(l.Min), "mean": msf(l.Mean), "p50": msf(l.P50), "p90": msf(l.P90), "p99": msf(l.P99), "max": msf(l.Max)},
		r.Errors, r.ErrorSample,
	}
}
