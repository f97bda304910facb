package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/localca"
)

// TestWebhookClientCertificate: a node started with WebhookClientCert
// presents a certificate of its local CA, named by its ID scope, to a
// custom allocation webhook that requires one, and the device is assigned.
func TestWebhookClientCertificate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	// The node's CA, made first so the webhook's certificate can come
	// from it too and the node be told to trust it for webhooks.
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(ctx, Config{
		DataDir: dir, HostName: "127.0.16.10",
		HTTPSAddr: "127.0.16.10:0", MQTTAddr: "127.0.16.10:0", AMQPAddr: "127.0.16.10:0",
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		WebhookClientCert: true, WebhookCAFiles: []string{ca.CertFile()},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	info := s.Info()
	bi, err := s.hubs.Create(ctx, "mtls-hub", builtinhub.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := s.hubs.HubConnectionString(ctx, bi.HostName)
	if _, err := s.linked.Create(ctx, linkedhub.Definition{ConnectionString: cs.String()}); err != nil {
		t.Fatal(err)
	}

	// The webhook trusts the node's CA for clients.
	serverCert, err := ca.ServerCertificate("test-webhook", []string{"127.0.16.11"})
	if err != nil {
		t.Fatal(err)
	}
	var seenCN string
	hook := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seenCN = r.TLS.PeerCertificates[0].Subject.CommonName
			fmt.Fprintf(w, `{"iotHubHostName":%q}`, bi.HostName)
		}),
	}
	l, err := net.Listen("tcp", "127.0.16.11:0")
	if err != nil {
		t.Fatal(err)
	}
	go hook.ServeTLS(l, "", "")
	defer hook.Close()

	svc, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.CreateEnrollment(ctx, &dps.IndividualEnrollment{
		RegistrationID: "mtls-device", Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy: dps.AllocationCustom, CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://" + l.Addr().String() + "/api/allocate", APIVersion: "2021-10-01"},
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	st, err := device.Register(rctx, device.Config{
		ProvisioningHost: info.HostName, DialAddr: info.HTTPSAddr, IDScope: info.IDScope, RegistrationID: "mtls-device",
		SymmetricKey: e.Attestation.SymmetricKey.PrimaryKey, Transport: device.TransportHTTPS, RootCAs: caPool(t, info.CACertFile), Timeout: 30 * time.Second,
	})
	if err != nil || st.AssignedHub != bi.HostName {
		t.Fatalf("register = %+v, %v; want assigned to %s", st, err, bi.HostName)
	}
	if seenCN != info.IDScope {
		t.Errorf("the webhook saw client certificate %q, want the ID scope %s", seenCN, info.IDScope)
	}
}
