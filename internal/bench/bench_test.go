package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/client/device"
)

func TestSummarize(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		var d []time.Duration
		for _, v := range n {
			d = append(d, time.Duration(v)*time.Millisecond)
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reversed: summarize must sort
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Latency
	}{
		{"empty", nil, Latency{}},
		{"one", ms(7), Latency{Min: 7 * time.Millisecond, Mean: 7 * time.Millisecond, P50: 7 * time.Millisecond,
			P90: 7 * time.Millisecond, P99: 7 * time.Millisecond, Max: 7 * time.Millisecond}},
		{"1..100", ms(hundred...), Latency{Min: 1 * time.Millisecond, Mean: 50500 * time.Microsecond, P50: 50 * time.Millisecond,
			P90: 90 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}},
		{"two", ms(10, 20), Latency{Min: 10 * time.Millisecond, Mean: 15 * time.Millisecond, P50: 10 * time.Millisecond,
			P90: 20 * time.Millisecond, P99: 20 * time.Millisecond, Max: 20 * time.Millisecond}},
	}
	for _, tc := range tests {
		if got := summarize(tc.in); got != tc.want {
			t.Errorf("%s: summarize = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.2:8443", true},
		{"127.255.0.1:443", true},
		{"[::1]:8883", true},
		{"localhost:443", true},
		{"10.0.0.1:443", false},
		{"192.0.2.7:8883", false},
		{"[2001:db8::1]:443", false},
		{"0.0.0.0:443", false},
		{"no-port", false},
	}
	for _, tc := range tests {
		err := CheckLoopback(context.Background(), tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestValidate(t *testing.T) {
	base := Options{
		Device:        device.Config{ProvisioningHost: "127.0.0.2:8443", IDScope: "s", GroupKey: "eA=="},
		Transport:     HTTPS,
		Registrations: 10,
		Concurrency:   2,
	}
	tests := []struct {
		name   string
		modify func(*Options)
		want   string // "" means valid
	}{
		{"valid", func(*Options) {}, ""},
		{"zero registrations", func(o *Options) { o.Registrations = 0 }, "registrations"},
		{"too many registrations", func(o *Options) { o.Registrations = MaxRegistrations + 1 }, "registrations"},
		{"zero concurrency", func(o *Options) { o.Concurrency = 0 }, "concurrency"},
		{"no group key", func(o *Options) { o.Device.GroupKey = "" }, "GroupKey"},
		{"unknown transport", func(o *Options) { o.Transport = "coap" }, "unknown transport"},
		{"remote host refused", func(o *Options) { o.Device.ProvisioningHost = "192.0.2.1" }, "not a loopback"},
		{"remote dial refused", func(o *Options) { o.Device.DialAddr = "192.0.2.1:8443" }, "not a loopback"},
		{"remote mqtt refused", func(o *Options) { o.Transport = MQTT; o.Device.ProvisioningHost = "192.0.2.1" }, "192.0.2.1:8883"},
		{"remote allowed", func(o *Options) { o.Device.ProvisioningHost = "192.0.2.1"; o.AllowRemote = true }, ""},
	}
	for _, tc := range tests {
		o := base
		tc.modify(&o)
		err := o.Validate(context.Background())
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: Validate = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// fakeService answers every register request at once: assigned, except for
// registration IDs ending in 3, which get a 401.
func fakeService(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/") // /scope/registrations/id/register
		id := parts[3]
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(id, "3") {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errorCode":401002,"message":"Unauthorized"}`)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"operationId":"op-%s","status":"assigned","registrationState":{"registrationId":%q,"deviceId":%q,"assignedHub":"hub.example.net","status":"assigned"}}`, id, id, id)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		transport string
		// Bounds on TLS connections for 40 registrations. Keep-alive needs
		// about one per worker; net/http may dial a few spare ones when a
		// request waits, so the bound only says "far fewer than 40".
		maxConns int64
		minConns int64
	}{
		{HTTPS, 20, 1},
		{HTTPSNewConn, 40, 40},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			srv, conns := fakeService(t)
			roots := x509.NewCertPool()
			roots.AddCert(srv.Certificate())
			res, err := Run(context.Background(), Options{
				Device: device.Config{
					ProvisioningHost: "example.com",
					DialAddr:         srv.Listener.Addr().String(),
					IDScope:          "0ne00ABC123",
					GroupKey:         "eA==",
					RootCAs:          roots,
				},
				Transport:     tc.transport,
				Registrations: 40,
				Concurrency:   4,
				IDPrefix:      "dev-",
			})
			if err != nil {
				t.Fatal(err)
			}
			// IDs dev-0000000 … dev-0000039: four end in 3.
			if res.Succeeded != 36 || res.Failed != 4 || res.Cancelled != 0 {
				t.Errorf("result = %+v", res)
			}
			if got := res.Errors["register: HTTP 401, errorCode 401002"]; got != 4 {
				t.Errorf("errors = %v", res.Errors)
			}
			if res.Latency.Max <= 0 || res.Latency.P50 > res.Latency.P99 || res.Rate() <= 0 {
				t.Errorf("latency %+v rate %v", res.Latency, res.Rate())
			}
			if n := conns.Load(); n < tc.minConns || n > tc.maxConns {
				t.Errorf("%d TLS connections, want %d..%d", n, tc.minConns, tc.maxConns)
			}
			var b strings.Builder
			res.Print(&b)
			if !strings.Contains(b.String(), "36 assigned") || !strings.Contains(b.String(), "p99") {
				t.Errorf("report:\n%s", b.String())
			}
		})
	}
}

func TestRunCancelled(t *testing.T) {
	srv, _ := fakeService(t)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing may start
	res, err := Run(ctx, Options{
		Device: device.Config{ProvisioningHost: "example.com", DialAddr: srv.Listener.Addr().String(),
			IDScope: "s", GroupKey: "eA==", RootCAs: roots},
		Transport: HTTPS, Registrations: 1000, Concurrency: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Succeeded+res.Failed != 0 || res.Cancelled != 1000 {
		t.Errorf("result = %+v", res)
	}
}
