package linkedhub

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
)

func testCAPEM(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "hub CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestCACertificates: a linked hub's CA bundle is validated on save, kept,
// handed to the registrar with the connection string, and removed by an
// empty update.
func TestCACertificates(t *testing.T) {
	ca := testCAPEM(t)
	tests := []struct {
		name    string
		bundle  string
		wantErr string
	}{
		{"one CA", ca, ""},
		{"two CAs", ca + ca, ""},
		{"not PEM", "hello", "no PEM certificate"},
		{"a key", "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n", "not a CERTIFICATE"},
		{"garbage after", ca + "trailing", "not PEM"},
		{"broken certificate", "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "certificate 1"},
		{"too large", strings.Repeat(ca, MaxCABytes/len(ca)+1), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(newStore(t))
			h, err := r.Create(t.Context(), Definition{ConnectionString: toastersCS, CACertificates: &tt.bundle})
			if tt.wantErr != "" {
				if code(err) != dps.CodeInvalidArgument || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Create = %v; want 400 with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(h.CACertificates, "BEGIN CERTIFICATE") {
				t.Fatalf("bundle not kept: %q", h.CACertificates)
			}
			cs, pool, err := r.HubCredentials(t.Context(), toasters)
			if err != nil || pool == nil || cs.HostName != toasters {
				t.Fatalf("HubCredentials = %v, %v, %v", cs, pool, err)
			}
			empty := ""
			if _, err := r.Update(t.Context(), toasters, Definition{CACertificates: &empty}, ""); err != nil {
				t.Fatal(err)
			}
			if _, pool, err := r.HubCredentials(t.Context(), toasters); err != nil || pool != nil {
				t.Fatalf("after removing the bundle: pool %v, %v; want the system roots (nil)", pool, err)
			}
		})
	}
}

// TestRotateKey: a new key replaces the old in place once the probe
// accepts it; a refused key, another host or a missing hub change nothing.
func TestRotateKey(t *testing.T) {
	newKey := "bmV3LXRvYXN0ZXJzLWtleQ=="
	newCS := "HostName=" + toasters + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + newKey
	accept := func(context.Context, *sas.ConnectionString, *x509.CertPool) error { return nil }
	refuse := func(context.Context, *sas.ConnectionString, *x509.CertPool) error {
		return errors.New("401 unauthorized")
	}
	tests := []struct {
		name     string
		hub      string
		rot      admin.LinkedHubKeyRotation
		probe    KeyProbe
		wantCode int
		wantKey  string
	}{
		{"accepted", toasters, admin.LinkedHubKeyRotation{ConnectionString: newCS}, accept, 0, newKey},
		{"refused by the hub", toasters, admin.LinkedHubKeyRotation{ConnectionString: newCS}, refuse, dps.CodeInvalidArgument, toasterKey},
		{"check skipped", toasters, admin.LinkedHubKeyRotation{ConnectionString: newCS, SkipCheck: true}, refuse, 0, newKey},
		{"another host", toasters, admin.LinkedHubKeyRotation{ConnectionString: heatpumpsCS}, accept, dps.CodeInvalidArgument, toasterKey},
		{"no connection string", toasters, admin.LinkedHubKeyRotation{}, accept, dps.CodeInvalidArgument, toasterKey},
		{"not linked", heatpumps, admin.LinkedHubKeyRotation{ConnectionString: heatpumpsCS}, accept, dps.CodeIoTHubNotLinked, toasterKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(newStore(t))
			w := 7
			if _, err := r.Create(t.Context(), Definition{ConnectionString: toastersCS, AllocationWeight: &w}); err != nil {
				t.Fatal(err)
			}
			_, err := r.RotateKey(t.Context(), tt.hub, tt.rot, "", tt.probe)
			if code(err) != tt.wantCode {
				t.Fatalf("RotateKey = %v; want code %d", err, tt.wantCode)
			}
			cs, err := r.HubConnectionString(t.Context(), toasters)
			if err != nil || cs.SharedAccessKey != tt.wantKey {
				t.Fatalf("key after rotation = %v, %v; want %s", cs, err, tt.wantKey)
			}
			if h, _ := r.Get(t.Context(), toasters); h.AllocationWeight != 7 {
				t.Errorf("rotation changed the weight: %+v", h)
			}
		})
	}
}

// FuzzCAPool: a CA bundle is operator input stored with the link; parsing
// it never panics, and a bundle it accepts holds a certificate.
func FuzzCAPool(f *testing.F) {
	f.Add(testCAPEM(f))
	f.Add("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, bundle string) {
		pool, err := CAPool(bundle)
		if err == nil && pool == nil {
			t.Fatal("accepted a bundle without a pool")
		}
	})
}
