package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dpsd/dpsd/client/device"
)

// Transport modes of a run.
const (
	// HTTPS shares one HTTP client, so registrations reuse keep-alive
	// connections (like a gateway provisioning many devices).
	HTTPS = "https"
	// HTTPSNewConn opens a new TLS connection for every request (like many
	// independent devices).
	HTTPSNewConn = "https-newconn"
	// MQTT opens one MQTT/TLS connection per registration, as devices do.
	MQTT = "mqtt"
	// MQTTWS opens one MQTT over WebSockets connection per registration.
	MQTTWS = "mqtt-ws"
	// AMQP opens one AMQP/TLS connection per registration, as devices do.
	AMQP = "amqp"
	// AMQPWS opens one AMQP over WebSockets connection per registration.
	AMQPWS = "amqp-ws"
)

// Limits that keep a mistyped flag from turning into a runaway.
const (
	MaxRegistrations = 10_000_000
	MaxConcurrency   = 10_000
	maxErrorKinds    = 20
)

// Options configure a run.
type Options struct {
	// Device is the template of every registration: ProvisioningHost,
	// DialAddr, IDScope, GroupKey, TLS settings, payload and timeouts.
	// RegistrationID, SymmetricKey, Transport and HTTPClient are set per
	// registration.
	Device device.Config
	// Transport is HTTPS, HTTPSNewConn, MQTT, MQTTWS, AMQP or AMQPWS.
	Transport string
	// Registrations is how many devices to provision (bounded).
	Registrations int
	// Concurrency is how many registrations run at once.
	Concurrency int
	// Duration, when positive, ends the run early; registrations still
	// running then are counted as cancelled.
	Duration time.Duration
	// IDPrefix starts every registration ID; the rest is a sequence number.
	IDPrefix string
	// AllowRemote permits targets that are not loopback addresses.
	AllowRemote bool
	// Progress, when set, receives a status line every second.
	Progress io.Writer
	// CSR makes every device send a certificate signing request (a new
	// P-256 key each, made before its registration is timed) and require
	// issuedCertificateChain in the answer; the enrollment must name an
	// issuing CA (GroupSpec.IssuingCA).
	CSR bool
	// TPMs, when set, make the devices attest with these TPMs instead of
	// the group key: registration i uses TPMs[i%len(TPMs)] as the device
	// IDPrefix+(i%len(TPMs)), one registration per TPM at a time, over
	// HTTPS, AMQP or AMQP/WS (the transports with a TPM exchange). Each
	// needs an individual TPM enrollment (SetupTPMs).
	TPMs []device.TPM
}

// Result summarizes a run.
type Result struct {
	Transport   string
	Requested   int
	Succeeded   int
	Failed      int
	Cancelled   int // not finished when the run was cut short
	Elapsed     time.Duration
	Latency     Latency // of successful registrations
	Errors      map[string]int
	ErrorSample map[string]string // one message per error kind
}

// Latency holds the distribution of registration times.
type Latency struct {
	Min, Mean, P50, P90, P99, Max time.Duration
}

// Rate is successful registrations per second of wall time.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Succeeded) / r.Elapsed.Seconds()
}

// Print writes a human-readable report.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "transport:      %s\n", r.Transport)
	fmt.Fprintf(w, "registrations:  %d requested, %d assigned, %d failed, %d cancelled\n",
		r.Requested, r.Succeeded, r.Failed, r.Cancelled)
	fmt.Fprintf(w, "elapsed:        %v\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "throughput:     %.1f registrations/s\n", r.Rate())
	if r.Succeeded > 0 {
		l := r.Latency
		fmt.Fprintf(w, "latency:        min %v  mean %v  p50 %v  p90 %v  p99 %v  max %v\n",
			ms(l.Min), ms(l.Mean), ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors:\n")
		kinds := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			kinds = append(kinds, k)
		}
		sort.Slice(kinds, func(i, j int) bool { return r.Errors[kinds[i]] > r.Errors[kinds[j]] })
		for _, k := range kinds {
			fmt.Fprintf(w, "  %6d  %s  (e.g. %s)\n", r.Errors[k], k, r.ErrorSample[k])
		}
	}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// Validate checks the options, including that the target is loopback unless
// AllowRemote is set.
func (o *Options) Validate(ctx context.Context) error {
	if o.Registrations <= 0 || o.Registrations > MaxRegistrations {
		return fmt.Errorf("bench: registrations must be 1..%d, not %d", MaxRegistrations, o.Registrations)
	}
	if o.Concurrency <= 0 || o.Concurrency > MaxConcurrency {
		return fmt.Errorf("bench: concurrency must be 1..%d, not %d", MaxConcurrency, o.Concurrency)
	}
	if o.Device.GroupKey == "" && len(o.TPMs) == 0 {
		return errors.New("bench: the device template needs a GroupKey (each device derives its own key)")
	}
	if len(o.TPMs) > 0 && (o.Transport == MQTT || o.Transport == MQTTWS) {
		return fmt.Errorf("bench: TPM devices register over %s, %s, %s or %s only (no SDK has TPM over MQTT)", HTTPS, HTTPSNewConn, AMQP, AMQPWS)
	}
	tr, err := deviceTransport(o.Transport)
	if err != nil {
		return err
	}
	if o.AllowRemote {
		return nil
	}
	c := o.Device
	c.Transport = tr
	addr, err := c.DialAddress()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return CheckLoopback(ctx, addr)
}

func deviceTransport(t string) (device.Transport, error) {
	switch t {
	case HTTPS, HTTPSNewConn:
		return device.TransportHTTPS, nil
	case MQTT:
		return device.TransportMQTT, nil
	case MQTTWS:
		return device.TransportMQTTWS, nil
	case AMQP:
		return device.TransportAMQP, nil
	case AMQPWS:
		return device.TransportAMQPWS, nil
	}
	return "", fmt.Errorf("bench: unknown transport %q (want %s, %s, %s, %s, %s or %s)", t, HTTPS, HTTPSNewConn, MQTT, MQTTWS, AMQP, AMQPWS)
}

// CheckLoopback returns an error unless every address addr's host resolves
// to is a loopback address (127.0.0.0/8 or ::1).
func CheckLoopback(ctx context.Context, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bench: target %q: %w", addr, err)
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return fmt.Errorf("bench: resolve target %q: %w", host, err)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("bench: target %s (%s) is not a loopback address; load is only sent elsewhere with --allow-remote", addr, ip)
		}
	}
	if len(ips) == 0 {
		return fmt.Errorf("bench: target %q resolves to no address", host)
	}
	return nil
}

// Run provisions o.Registrations devices and reports how it went. It
// returns an error only when the run could not start.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.Validate(ctx); err != nil {
		return nil, err
	}
	tr, _ := deviceTransport(o.Transport)
	tmpl := o.Device
	tmpl.Transport = tr
	tmpl.Progress = nil
	if tmpl.TLSConfig == nil {
		// Offer the key exchanges the Azure device SDKs offer (their TLS
		// stacks, OpenSSL and mbedTLS, have no post-quantum hybrid), so
		// the server does the work real devices cause, not the heavier
		// X25519MLKEM768 that a Go client would pick.
		tmpl.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	}
	if tr == device.TransportHTTPS {
		hc, err := device.NewHTTPClient(tmpl)
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		t := hc.Transport.(*http.Transport)
		t.MaxIdleConnsPerHost = o.Concurrency
		t.DisableKeepAlives = o.Transport == HTTPSNewConn
		defer hc.CloseIdleConnections()
		tmpl.HTTPClient = hc
	}

	runCtx := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}

	var (
		next, succeeded, failed, cancelled atomic.Int64
		mu                                 sync.Mutex
		latencies                          = make([]time.Duration, 0, min(o.Registrations, 1<<20))
		errs                               = map[string]int{}
		samples                            = map[string]string{}
	)
	record := func(d time.Duration, err error) {
		if err == nil {
			succeeded.Add(1)
		} else if runCtx.Err() != nil || pastDeadline(runCtx) {
			// Socket deadlines derived from the run's deadline can
			// fire a moment before the context reports it.
			cancelled.Add(1)
			return
		} else {
			failed.Add(1)
		}
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			latencies = append(latencies, d)
			return
		}
		k := errorKind(err)
		if _, ok := errs[k]; !ok && len(errs) >= maxErrorKinds {
			k = "other"
		}
		errs[k]++
		if _, ok := samples[k]; !ok {
			samples[k] = err.Error()
		}
	}

	// A TPM runs one session at a time.
	tpmMu := make([]sync.Mutex, len(o.TPMs))
	start := time.Now()
	stopProgress := startProgress(o.Progress, start, &succeeded, &failed)
	var wg sync.WaitGroup
	for range min(o.Concurrency, o.Registrations) {
		wg.Go(func() {
			for runCtx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(o.Registrations) {
					return
				}
				c := tmpl
				c.RegistrationID = fmt.Sprintf("%s%07d", o.IDPrefix, i)
				k := -1
				if n := int64(len(o.TPMs)); n > 0 {
					k = int(i % n)
					c.RegistrationID = TPMRegistrationID(o.IDPrefix, k)
					c.TPM, c.GroupKey = o.TPMs[k], ""
				}
				if o.CSR {
					var err error
					if c.CSR, err = newCSR(c.RegistrationID); err != nil {
						record(0, err)
						continue
					}
				}
				var unlock func()
				if k >= 0 {
					tpmMu[k].Lock()
					unlock = tpmMu[k].Unlock
				}
				t0 := time.Now()
				_, err := device.Register(runCtx, c)
				record(time.Since(t0), err)
				if unlock != nil {
					unlock()
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()

	res := &Result{
		Transport:   o.Transport,
		Requested:   o.Registrations,
		Succeeded:   int(succeeded.Load()),
		Failed:      int(failed.Load()),
		Elapsed:     elapsed,
		Latency:     summarize(latencies),
		Errors:      errs,
		ErrorSample: samples,
	}
	// Registrations never started because the run was cut short count as
	// cancelled too.
	res.Cancelled = o.Registrations - res.Succeeded - res.Failed
	return res, nil
}

// startProgress prints a status line every second until the returned stop
// function is called.
func startProgress(w io.Writer, start time.Time, ok, failed *atomic.Int64) (stop func()) {
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fmt.Fprintf(w, "%6.1fs  %d assigned  %d failed\n", now.Sub(start).Seconds(), ok.Load(), failed.Load())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// summarize sorts d and returns its distribution (nearest-rank percentiles).
func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	pct := func(p float64) time.Duration {
		i := int(p/100*float64(len(d))+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return Latency{
		Min: d[0], Mean: sum / time.Duration(len(d)),
		P50: pct(50), P90: pct(90), P99: pct(99), Max: d[len(d)-1],
	}
}

// errorKind groups errors so that a report stays short: the Azure error
// code for service errors, a network category otherwise.
func errorKind(err error) string {
	var de *device.Error
	if errors.As(err, &de) {
		if de.Status != "" {
			return fmt.Sprintf("registration %s, errorCode %d", de.Status, de.Code())
		}
		return fmt.Sprintf("%s: HTTP %d, errorCode %d", de.Op, de.StatusCode, de.Code())
	}
	var tlsErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "out of local ports"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.As(err, &tlsErr):
		return "TLS certificate"
	case strings.Contains(err.Error(), "websocket"):
		return "websocket"
	}
	return "other"
}

// pastDeadline reports whether ctx's deadline has passed.
func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// TPMRegistrationID is the registration id of the k-th TPM of a run.
func TPMRegistrationID(prefix string, k int) string { return fmt.Sprintf("%stpm-%03d", prefix, k) }

// newCSR makes a P-256 key and a certificate signing request for regID.
func newCSR(regID string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("bench: csr key: %w", err)
	}
	return device.NewCSR(regID, key)
}
