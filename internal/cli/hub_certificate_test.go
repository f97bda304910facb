package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/certs"
)

// TestHubCertificateCommands drives dpsd hub certificate: upload, proof
// of possession, list, show, delete.
func TestHubCertificateCommands(t *testing.T) {
	e := newHubCLIEnv(t)
	e.mustRun("create", "cert-hub")
	root, err := certs.NewRoot("CLI Root", certs.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, root.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}

	var c struct {
		Name, ETag, VerificationCode, Origin string
		IsVerified                           bool
	}
	mustJSON(t, e.mustRun("certificate", "create", "--hub-name", "cert-hub", "-n", "root", "--path", caFile, "-o", "json"), &c)
	if c.Name != "root" || c.IsVerified || c.Origin != "uploaded" {
		t.Fatalf("certificate create: %+v", c)
	}
	mustJSON(t, e.mustRun("certificate", "generate-verification-code", "--hub-name", "cert-hub", "-n", "root", "-e", c.ETag, "-o", "json"), &c)
	if c.VerificationCode == "" {
		t.Fatalf("no verification code: %+v", c)
	}
	v, err := root.Verification(c.VerificationCode, certs.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vFile := filepath.Join(dir, "verification.pem")
	if err := os.WriteFile(vFile, v.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := e.run(t.Context(), &buf, "certificate", "verify", "--hub-name", "cert-hub", "-n", "root", "--path", caFile); err == nil {
		t.Fatal("verify with the CA certificate itself succeeded")
	}
	if out := e.mustRun("certificate", "verify", "--hub-name", "cert-hub", "-n", "root", "--path", vFile); !strings.Contains(out, "true") {
		t.Fatalf("certificate verify:\n%s", out)
	}
	if out := e.mustRun("certificate", "list", "--hub-name", "cert-hub"); !strings.Contains(out, "root") || !strings.Contains(out, "CN=CLI Root") || !strings.Contains(out, "true") {
		t.Fatalf("certificate list:\n%s", out)
	}
	if out := e.mustRun("certificate", "show", "--hub-name", "cert-hub", "-n", "root"); !strings.Contains(out, "CN=CLI Root") {
		t.Fatalf("certificate show:\n%s", out)
	}
	if err := e.run(t.Context(), &buf, "certificate", "create", "--hub-name", "cert-hub", "-n", "root2", "--path", caFile); err == nil {
		t.Fatal("the same CA uploaded twice")
	}
	e.mustRun("certificate", "delete", "--hub-name", "cert-hub", "-n", "root")
	if err := e.run(t.Context(), &buf, "certificate", "show", "--hub-name", "cert-hub", "-n", "root"); err == nil {
		t.Fatal("show after delete succeeded")
	}
}
