package allocate

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/localca"
)

// TestWebhookMutualTLS: a webhook that requires a client certificate from
// dpsd's CA gets one from a webhook client given ClientCertificate, and
// refuses the handshake of one without (400207 for the device); the
// webhook sees the certificate's common name.
func TestWebhookMutualTLS(t *testing.T) {
	ca, err := localca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var seenCN string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenCN = r.TLS.PeerCertificates[0].Subject.CommonName
		fmt.Fprintf(w, `{"iotHubHostName":%q}`, hubA)
	}))
	l, err := net.Listen("tcp", "127.0.16.7:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	serverCert, err := ca.ServerCertificate("hook", []string{"127.0.16.7"})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := ca.Pool()

	req := &dps.AllocationRequest{
		DeviceRuntimeContext: dps.DeviceRuntimeContext{RegistrationID: "dev-mtls"},
		LinkedHubs:           []string{hubA, hubB},
	}
	clientCert := func() (*tls.Certificate, error) {
		c, err := ca.ClientCertificate("webhook-client", "0ne00000001")
		return &c, err
	}
	tests := []struct {
		name     string
		cert     func() (*tls.Certificate, error)
		wantCode int
	}{
		{"with dpsd's client certificate", clientCert, 0},
		{"without", nil, dps.CodeCustomAllocationFailed},
		{"with another CA's certificate", func() (*tls.Certificate, error) {
			other, err := localca.LoadOrCreate(t.TempDir())
			if err != nil {
				return nil, err
			}
			c, err := other.ClientCertificate("webhook-client", "0ne00000001")
			return &c, err
		}, dps.CodeCustomAllocationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seenCN = ""
			// Azure's retries stay on: a refused client certificate is not
			// retried, so this fails at once.
			w, err := NewWebhook(WebhookOptions{CAPool: roots, ClientCertificate: tt.cert})
			if err != nil {
				t.Fatal(err)
			}
			got, err := w.Call(t.Context(), srv.URL+"/api/allocate", req)
			if code := errCode(err); code != tt.wantCode {
				t.Fatalf("Call = %+v, %v; want code %d", got, err, tt.wantCode)
			}
			if err != nil && !strings.Contains(err.Error(), "client certificate") {
				t.Fatalf("Call = %v; want it to say the webhook refused dpsd's client certificate", err)
			}
			if tt.wantCode == 0 && (got.Hub != hubA || seenCN != "0ne00000001") {
				t.Errorf("assigned %s, webhook saw CN %q; want %s and the ID scope", got.Hub, seenCN, hubA)
			}
		})
	}
	// The stored certificate is reused, and is a client certificate.
	a, _ := ca.ClientCertificate("webhook-client", "0ne00000001")
	b, _ := ca.ClientCertificate("webhook-client", "0ne00000001")
	if a.Leaf.SerialNumber.Cmp(b.Leaf.SerialNumber) != 0 || a.Leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("client certificate not reused or not for client auth: %v %v", a.Leaf.SerialNumber, a.Leaf.ExtKeyUsage)
	}
}
