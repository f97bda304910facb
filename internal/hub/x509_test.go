package hub_test

import (
	"context"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/provision"
)

// TestRegistrarX509 checks the authentication the registrar sends over
// REST for devices that attested with X.509.
func TestRegistrarX509(t *testing.T) {
	b := startBuiltin(t, 0, 0)
	h := b.create(t, "x509-rest-hub", "127.0.5.21")
	host := h.Config().HostName
	r := hub.NewRegistrar(hub.RegistrarOptions{Credentials: credentials{b.m}, ClientOptions: []azurehub.ClientOption{azurehub.WithHTTPClient(b.httpClient())}})
	ctx := context.Background()
	tp1, tp2, tp3 := strings.Repeat("A1", 32), strings.Repeat("B2", 32), strings.Repeat("C3", 32)

	tests := []struct {
		name     string
		dev      provision.HubDevice
		wantType string
		primary  string
		second   string
	}{
		{"individual certificates", provision.HubDevice{DeviceID: "x509-self", X509: &provision.HubX509{PrimaryThumbprint: tp1, SecondaryThumbprint: tp2}}, azurehub.AuthSelfSigned, tp1, tp2},
		{"rolled certificate updates the identity", provision.HubDevice{DeviceID: "x509-self", X509: &provision.HubX509{PrimaryThumbprint: tp3}}, azurehub.AuthSelfSigned, tp3, ""},
		{"group member", provision.HubDevice{DeviceID: "x509-ca", X509: &provision.HubX509{CACertificates: []string{"(not sent over REST)"}}}, azurehub.AuthCertificateAuthority, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.dev
			dev.Hub = host
			if err := r.RegisterDevice(ctx, &dev); err != nil {
				t.Fatal(err)
			}
			d, err := h.GetDevice(ctx, dev.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			a := d.Authentication
			if a.Type != tc.wantType || a.SymmetricKey != nil {
				t.Fatalf("authentication %+v", a)
			}
			got := func(p *string) string {
				if p == nil {
					return ""
				}
				return *p
			}
			if tc.primary != "" && (a.X509Thumbprint == nil || got(a.X509Thumbprint.PrimaryThumbprint) != tc.primary || got(a.X509Thumbprint.SecondaryThumbprint) != tc.second) {
				t.Errorf("thumbprints %+v, want %s / %s", a.X509Thumbprint, tc.primary, tc.second)
			}
		})
	}
}
