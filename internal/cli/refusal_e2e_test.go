package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/server"
)

// syncBuffer is a log sink the server's goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startLoggingServer runs a dpsd with every transport on addr's host and
// its info-level JSON log in the returned buffer.
func startLoggingServer(t *testing.T, host string) (string, *admin.Info, *syncBuffer) {
	t.Helper()
	dataDir := t.TempDir()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		DataDir:   dataDir,
		HostName:  "localhost",
		HTTPSAddr: host + ":0",
		MQTTAddr:  host + ":0",
		AMQPAddr:  host + ":0",
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		cancel()
		t.Fatalf("start dpsd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return dataDir, s.Info(), logs
}

// TestRefusalsLeadSomewhere: a device refused over each transport is told a
// tracking id; the log has one info line with that id, the registration id,
// the transport and the reason, and "dpsd registration show" finds it.
func TestRefusalsLeadSomewhere(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, info, logs := startLoggingServer(t, "127.0.12.1")
	run := func(args ...string) (string, error) {
		t.Helper()
		return runCLI(t, append(args, "--data-dir", dataDir)...)
	}
	if _, err := run("enrollment", "create", "--registration-id", "known-device"); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	wrongKey := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

	tests := []struct {
		transport device.Transport
		addr      string
		regID     string
		reason    string
	}{
		{device.TransportHTTPS, info.HTTPSAddr, "unknown-over-https", "no individual enrollment"},
		{device.TransportMQTT, info.MQTTAddr, "unknown-over-mqtt", "no individual enrollment"},
		{device.TransportAMQP, info.AMQPAddr, "unknown-over-amqp", "no individual enrollment"},
		{device.TransportHTTPS, info.HTTPSAddr, "known-device", "neither key of individual enrollment"},
	}
	for _, tc := range tests {
		t.Run(string(tc.transport)+"/"+tc.regID, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := device.Register(ctx, device.Config{
				ProvisioningHost: "localhost",
				DialAddr:         tc.addr,
				IDScope:          info.IDScope,
				RegistrationID:   tc.regID,
				SymmetricKey:     wrongKey,
				Transport:        tc.transport,
				RootCAs:          roots,
			})
			var de *dps.Error
			if !errors.As(err, &de) || de.ErrorCode != dps.CodeUnauthorized || de.TrackingID == "" {
				t.Fatalf("register with a wrong key: %v, want 401000 with a tracking id", err)
			}
			if strings.Contains(de.Message, tc.reason) {
				t.Errorf("the device was told the reason: %q", de.Message)
			}

			// One info line with the tracking id, the registration id,
			// the transport and the reason.
			var found []map[string]any
			for _, line := range strings.Split(logs.String(), "\n") {
				if !strings.Contains(line, de.TrackingID) {
					continue
				}
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				found = append(found, rec)
			}
			if len(found) != 1 {
				t.Fatalf("%d log lines with tracking id %s, want 1:\n%s", len(found), de.TrackingID, logs.String())
			}
			rec := found[0]
			if rec["level"] != "INFO" || rec["registrationId"] != tc.regID || rec["transport"] != string(tc.transport) ||
				!strings.Contains(rec["reason"].(string), tc.reason) {
				t.Errorf("log line %v: want INFO, registrationId %s, transport %s, reason with %q", rec, tc.regID, tc.transport, tc.reason)
			}

			// registration show finds it by registration id...
			out, err := run("registration", "show", "--registration-id", tc.regID)
			if tc.regID != "known-device" {
				var se *dps.Error
				if !errors.As(err, &se) || se.Status() != 404 {
					t.Errorf("registration show of a device without a record: %v, want its 404", err)
				}
			}
			for _, want := range []string{de.TrackingID, tc.reason, string(tc.transport), "401000 Unauthorized."} {
				if !strings.Contains(out, want) {
					t.Errorf("registration show --registration-id %s lacks %q:\n%s", tc.regID, want, out)
				}
			}
			// ... and by tracking id, also as JSON.
			out, err = run("registration", "show", "--tracking-id", de.TrackingID, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var rs admin.Refusals
			if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs.Refusals) != 1 ||
				rs.Refusals[0].RegistrationID != tc.regID || !strings.Contains(rs.Refusals[0].Reason, tc.reason) {
				t.Errorf("registration show --tracking-id: %v\n%s", err, out)
			}
		})
	}

	for _, format := range []string{"table", "json"} {
		out, err := run("registration", "show", "--tracking-id", "no-such-id", "-o", format)
		if err == nil || !strings.Contains(err.Error(), "no refused request with tracking id no-such-id") {
			t.Errorf("unknown tracking id, -o %s: %v", format, err)
		}
		if format == "json" && strings.TrimSpace(out) != `{
  "refusals": []
}` {
			t.Errorf("unknown tracking id, -o json printed %q", out)
		}
	}
	if _, err := run("registration", "show"); err == nil {
		t.Error("registration show with neither id: no error")
	}
}
