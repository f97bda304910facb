package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
)

func startServer(t *testing.T, dir string) (*Server, context.CancelFunc, chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Config{
		DataDir: dir, HostName: "dps.test", HTTPSAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	return s, cancel, done
}

func client(t *testing.T, info *Info) *http.Client {
	pem, err := os.ReadFile(info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "dps.test"},
	}}
}

func TestServeRoutesAndRestarts(t *testing.T) {
	dir := t.TempDir()
	s, cancel, done := startServer(t, dir)
	info := s.Info()

	// info.json holds the owner key: only the owner may read it.
	st, err := os.Stat(filepath.Join(dir, InfoFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("info.json: %v, mode %v", err, st.Mode())
	}
	onDisk, err := ReadInfo(dir)
	if err != nil || *onDisk != *info {
		t.Fatalf("ReadInfo = %+v, %v; want %+v", onDisk, err, info)
	}
	if !strings.HasPrefix(info.IDScope, "0ne") || len(info.IDScope) != 11 {
		t.Errorf("id scope %q", info.IDScope)
	}
	cs, err := sas.ParseConnectionString(info.ServiceConnectionString)
	if err != nil || cs.SharedAccessKeyName != instance.OwnerPolicy || !strings.HasPrefix(cs.HostName, "dps.test:") {
		t.Fatalf("connection string %q: %v", info.ServiceConnectionString, err)
	}

	hc := client(t, info)
	base := "https://" + info.HTTPSAddr
	tok, _ := sas.New("dps.test", cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))
	tests := []struct {
		name, method, path string
		auth               string
		want               int
		wantCode           int
	}{
		{"health", "GET", "/healthz", "", 200, 0},
		{"service API", "POST", "/enrollments/query?api-version=2021-10-01", tok, 200, 0},
		{"service API, other case", "POST", "/EnrollmentGroups/query/?api-version=2021-10-01", tok, 200, 0},
		{"service API without token", "GET", "/enrollments/x?api-version=2021-10-01", "", 401, dps.CodeUnauthorized},
		{"device API", "PUT", "/" + info.IDScope + "/registrations/dev/register?api-version=2019-03-31", "", 401, dps.CodeUnauthorized},
		{"device API, unknown scope", "PUT", "/0ne00000000/registrations/dev/register?api-version=2019-03-31", "", 404, dps.CodeIDScopeNotFound},
		{"unknown path", "GET", "/nothing/here", "", 404, dps.CodeNotFound},
		{"all registrations", "GET", "/dpsd/registrations?status=assigned", tok, 200, 0},
		{"all registrations without token", "GET", "/dpsd/registrations", "", 401, dps.CodeUnauthorized},
		{"statistics", "GET", "/dpsd/stats", tok, 200, 0},
		{"statistics without token", "GET", "/dpsd/stats", "", 401, dps.CodeUnauthorized},
		{"console API signed out", "GET", "/console/api/enrollmentGroups/g", "", 401, dps.CodeUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, base+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			if tc.wantCode != 0 {
				var e dps.Error
				if json.Unmarshal(body, &e) != nil || e.ErrorCode != tc.wantCode {
					t.Errorf("body %s, want errorCode %d", body, tc.wantCode)
				}
			}
		})
	}

	// "/" leads a browser to the console, which the binary carries.
	noRedirect := *hc
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noRedirect.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/console/" {
		t.Errorf("GET / = %d to %q, want a redirect to /console/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = hc.Get(base + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), `<script type="module" src="/console/static/js/app.js">`) || resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("GET /console/ = %d, CSP %q:\n%s", resp.StatusCode, resp.Header.Get("Content-Security-Policy"), page)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no graceful shutdown within 30 s")
	}

	// A restart keeps the instance and the CA.
	s2, cancel2, done2 := startServer(t, dir)
	defer func() { cancel2(); <-done2 }()
	if s2.Info().IDScope != info.IDScope || s2.Info().CACertFile != info.CACertFile {
		t.Errorf("restart changed the instance: %+v vs %+v", s2.Info(), info)
	}
	if got, want := strings.Split(s2.Info().ServiceConnectionString, ";")[2], strings.Split(info.ServiceConnectionString, ";")[2]; got != want {
		t.Errorf("restart changed the owner key: %s vs %s", got, want)
	}
}

func TestBindErrorsSuggestAnotherAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Start(context.Background(), Config{
		DataDir: t.TempDir(), HTTPSAddr: l.Addr().String(), MQTTAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), "--https-addr") {
		t.Fatalf("err = %v; want a message naming the flag and the cause", err)
	}
}

func TestDataDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	_, cancel, done := startServer(t, dir)
	defer func() { cancel(); <-done }()
	_, err := Start(context.Background(), Config{
		DataDir: dir, HTTPSAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil || !strings.Contains(err.Error(), "in use by another dpsd") {
		t.Fatalf("second server on one data dir: %v", err)
	}
}
