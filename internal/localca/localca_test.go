package localca

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServerCertificateVerifiesAndPersists(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"dps.example", "localhost", "127.0.0.1", "127.0.0.2"}
	c1, err := ca.ServerCertificate("server", names)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dns, ip string }{{"dps.example", ""}, {"localhost", ""}, {"", "127.0.0.2"}} {
		opts := x509.VerifyOptions{Roots: ca.Pool(), DNSName: tc.dns}
		if tc.ip != "" {
			opts.DNSName = tc.ip
		}
		if _, err := c1.Leaf.Verify(opts); err != nil {
			t.Errorf("verify %v: %v", tc, err)
		}
	}
	if err := c1.Leaf.VerifyHostname("127.0.0.3"); err == nil {
		t.Error("certificate covers an address it was not issued for")
	}

	// Re-opening keeps the CA and the certificate.
	ca2, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Cert.Equal(ca.Cert) {
		t.Fatal("CA was regenerated on reopen")
	}
	c2, err := ca2.ServerCertificate("server", names[:2])
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Leaf.Equal(c1.Leaf) {
		t.Error("certificate covering the names was not reused")
	}
	// A new name forces a new certificate.
	c3, err := ca2.ServerCertificate("server", append(names, "other.example"))
	if err != nil {
		t.Fatal(err)
	}
	if c3.Leaf.Equal(c1.Leaf) || !c3.Leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Error("certificate not reissued for a new name")
	}
}

func TestPoolWithFiles(t *testing.T) {
	ca, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.ServerCertificate("server", []string{"dps.example"})
	if err != nil {
		t.Fatal(err)
	}
	verifies := func(pool *x509.CertPool) bool {
		_, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "dps.example"})
		return err == nil
	}

	base := x509.NewCertPool()
	pool, err := PoolWithFiles(base, ca.CertFile())
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(pool) {
		t.Error("the pool does not trust the CA file's certificate")
	}
	if verifies(base) {
		t.Error("PoolWithFiles modified base")
	}
	if pool, err := PoolWithFiles(nil, ca.CertFile()); err != nil || !verifies(pool) {
		t.Errorf("system roots plus the CA file: err = %v, or the CA is not trusted", err)
	}

	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing.pem"): "read CA file",
		notPEM: "holds no PEM certificate",
	} {
		if _, err := PoolWithFiles(nil, file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("PoolWithFiles(%s): err = %v, want it to contain %q", file, err, want)
		}
	}
}
