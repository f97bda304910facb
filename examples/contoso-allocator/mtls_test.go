package main

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/localca"
)

// TestMutualTLS: the webhook, run with --client-ca (dpsd's CA) and
// --client-cn (the ID scope), assigns devices for a dpsd that presents its
// client certificate, answers 401 (400209) to a certificate of another
// instance of the same CA, and refuses the handshake without one.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := localca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := clientAuth(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate("webhook", []string{"127.0.16.8"})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.Certificates = []tls.Certificate{serverCert}
	srv := httptest.NewUnstartedServer(&allocator{log: slog.New(slog.DiscardHandler), clientCN: "0ne0000000A"})
	if srv.Listener, err = net.Listen("tcp", "127.0.16.8:0"); err != nil {
		t.Fatal(err)
	}
	srv.TLS = tlsCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)

	cert := func(name, cn string) func() (*tls.Certificate, error) {
		return func() (*tls.Certificate, error) {
			c, err := ca.ClientCertificate(name, cn)
			return &c, err
		}
	}
	req := &dps.AllocationRequest{
		DeviceRuntimeContext: dps.DeviceRuntimeContext{RegistrationID: "breakroom499-contoso-tstrsd-007"},
		LinkedHubs:           []string{toasters, heatpumps},
	}
	tests := []struct {
		name     string
		cert     func() (*tls.Certificate, error)
		wantCode int
	}{
		{"dpsd's certificate", cert("client", "0ne0000000A"), 0},
		{"another instance's", cert("other", "0ne0000000B"), dps.CodeCustomAllocationUnauthorizedAccess},
		{"none", nil, dps.CodeCustomAllocationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wh, err := allocate.NewWebhook(allocate.WebhookOptions{CAPool: ca.Pool(), ClientCertificate: tt.cert, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			got, err := wh.Call(t.Context(), srv.URL+"/api/allocate", req)
			var de *dps.Error
			switch {
			case tt.wantCode == 0 && (err != nil || got.Hub != toasters):
				t.Fatalf("Call = %+v, %v; want %s", got, err, toasters)
			case tt.wantCode != 0 && (!errors.As(err, &de) || de.ErrorCode != tt.wantCode):
				t.Fatalf("Call = %+v, %v; want %d", got, err, tt.wantCode)
			}
		})
	}
	if _, err := clientAuth(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("a missing --client-ca file is accepted")
	}
}
