package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
)

func TestMetricsAfterRequests(t *testing.T) {
	s, cancel, done := startServer(t, t.TempDir())
	defer func() { cancel(); <-done }()
	info := s.Info()
	hc := client(t, info)
	base := "https://" + info.HTTPSAddr
	cs, err := sas.ParseConnectionString(info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := sas.New("dps.test", cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))

	requests := []struct {
		method, path, auth string
		want               int
	}{
		{"PUT", "/" + info.IDScope + "/registrations/dev/register?api-version=2019-03-31", "", http.StatusUnauthorized},
		{"POST", "/enrollments/query?api-version=2021-10-01", tok, http.StatusOK},
	}
	for _, r := range requests {
		req, _ := http.NewRequest(r.method, base+r.path, nil)
		if r.auth != "" {
			req.Header.Set("Authorization", r.auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != r.want {
			t.Fatalf("%s %s: status %d, want %d", r.method, r.path, resp.StatusCode, r.want)
		}
	}

	// The debug listener's handler, as Serve mounts it.
	dbg := debugHandler(s.prom.Handler())
	rec := httptest.NewRecorder()
	dbg.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`dpsd_device_requests_total{operation="register",outcome="error_4xx",transport="https"} 1`,
		`dpsd_device_request_duration_seconds_count{operation="register",transport="https"} 1`,
		`dpsd_service_requests_total{code="200",method="post"} 1`,
		`dpsd_registrations_total{status="failed"} 0`,
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	rec = httptest.NewRecorder()
	dbg.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/debug/pprof/: status %d", rec.Code)
	}
}

// plainStore has no Ping, like the embedded SQLite store.
type plainStore struct{ store.Store }

// pingStore answers Ping with err and remembers whether it was given a
// deadline.
type pingStore struct {
	store.Store
	err         error
	hadDeadline bool
}

func (p *pingStore) Ping(ctx context.Context) error {
	_, p.hadDeadline = ctx.Deadline()
	return p.err
}

func TestHealthzChecksStore(t *testing.T) {
	tests := []struct {
		name       string
		st         store.Store
		wantStatus int
	}{
		{"store without Ping", plainStore{}, http.StatusOK},
		{"store that answers", &pingStore{}, http.StatusOK},
		{"store that does not answer", &pingStore{err: errors.New("dial tcp 10.0.0.9:5432: connection refused")}, http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{st: tc.st, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			rec := httptest.NewRecorder()
			s.route(rec, httptest.NewRequest("GET", "/healthz", nil))
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			if p, ok := tc.st.(*pingStore); ok && !p.hadDeadline {
				t.Error("Ping got a context without a deadline; a hung database would hang the probe")
			}
			if tc.wantStatus == http.StatusOK {
				if got := strings.TrimSpace(rec.Body.String()); got != `{"status":"ok"}` {
					t.Errorf("body %s", got)
				}
				return
			}
			var e dps.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			if e.ErrorCode != dps.CodeServiceUnavailable || e.TrackingID == "" || e.Info["status"] != "unavailable" {
				t.Errorf("body %s, want errorCode %d, a trackingId and info.status unavailable", rec.Body, dps.CodeServiceUnavailable)
			}
			if strings.Contains(rec.Body.String(), "10.0.0.9") {
				t.Errorf("body %s leaks the store's error", rec.Body)
			}
			if rec.Header().Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
		})
	}
}
