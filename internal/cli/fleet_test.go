package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExportApplyRoundTrip: export → apply on a fresh node → export again
// is identical; apply is idempotent, --dry-run changes nothing, --prune
// deletes what the file no longer names, and a hand-written file changes
// only what it names.
func TestExportApplyRoundTrip(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dirA, _, _ := startLoggingServer(t, "127.0.12.9")
	dirB, _, _ := startLoggingServer(t, "127.0.12.10")
	on := func(dir string, args ...string) string {
		t.Helper()
		out, err := runCLI(t, append(args, "--data-dir", dir)...)
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	on(dirA, "enrollment", "create", "--registration-id", "dev-1", "--device-id", "device-one", "--initial-twin-tags", `{"site":"a"}`)
	on(dirA, "enrollment", "create", "--registration-id", "dev-2", "--provisioning-status", "disabled", "--reprovision-policy", "never")
	on(dirA, "enrollment-group", "create", "--enrollment-group-id", "grp", "--allocation-policy", "custom",
		"--webhook-url", "https://alloc.example/api", "--iot-hubs", "hub-a.example")
	on(dirA, "linked-hub", "create", "--connection-string", "HostName=hub-a.example;SharedAccessKeyName=iothubowner;SharedAccessKey=eA==",
		"--allocation-weight", "3", "--location", "westeurope")

	exported := on(dirA, "export", "--include-keys")
	file := filepath.Join(t.TempDir(), "fleet.yaml")
	// The service never shows a linked hub's key: give it, as a user would.
	withCS := strings.Replace(exported, "  name: hub-a.example\n", "  name: hub-a.example\n  connectionString: HostName=hub-a.example;SharedAccessKeyName=iothubowner;SharedAccessKey=eA==\n", 1)
	if withCS == exported {
		t.Fatalf("export has no linked hub:\n%s", exported)
	}
	if err := os.WriteFile(file, []byte(withCS), 0o600); err != nil {
		t.Fatal(err)
	}

	if out := on(dirB, "apply", "-f", file, "--dry-run"); !strings.Contains(out, "(dry run) [1/4] create enrollment dev-1") {
		t.Errorf("dry run:\n%s", out)
	}
	if out := on(dirB, "export"); strings.Contains(out, "dev-1") {
		t.Errorf("--dry-run changed the service:\n%s", out)
	}
	on(dirB, "apply", "-f", file)
	if again := on(dirB, "export", "--include-keys"); again != exported {
		t.Errorf("export after apply differs:\n--- from A\n%s\n--- from B\n%s", exported, again)
	}
	if out := on(dirB, "apply", "-f", file); !strings.Contains(out, "No changes") {
		t.Errorf("second apply:\n%s", out)
	}

	// A hand-written file names a few members; the others stay.
	hand := filepath.Join(t.TempDir(), "hand.yaml")
	os.WriteFile(hand, []byte(`apiVersion: dpsd/v1
kind: Fleet
enrollments:
- registrationId: dev-1
  provisioningStatus: disabled
`), 0o600)
	if out := on(dirB, "apply", "-f", hand); !strings.Contains(out, "update enrollment dev-1") || strings.Contains(out, "dev-2") {
		t.Errorf("hand-written apply:\n%s", out)
	}
	if out := on(dirB, "enrollment", "show", "--registration-id", "dev-1", "-o", "json"); !strings.Contains(out, `"provisioningStatus": "disabled"`) ||
		!strings.Contains(out, `"deviceId": "device-one"`) || !strings.Contains(out, `"site": "a"`) {
		t.Errorf("after the hand-written apply:\n%s", out)
	}
	if out := on(dirB, "apply", "-f", hand); !strings.Contains(out, "No changes") {
		t.Errorf("hand-written apply again:\n%s", out)
	}
	if out := on(dirB, "apply", "-f", hand, "--prune"); !strings.Contains(out, "delete enrollment dev-2") ||
		!strings.Contains(out, "delete enrollment group grp") || !strings.Contains(out, "unlink hub hub-a.example") {
		t.Errorf("prune:\n%s", out)
	}
	if out := on(dirB, "export"); strings.Contains(out, "dev-2") || strings.Contains(out, "grp") || !strings.Contains(out, "dev-1") {
		t.Errorf("after prune:\n%s", out)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: dpsd/v1\nkind: Fleet\nenrollments:\n- registrationId: x\n  colour: red\n"), 0o600)
	if _, err := runCLI(t, "apply", "-f", bad, "--data-dir", dirB); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown member: %v", err)
	}
}

// writeSelfSigned writes a self-signed PEM certificate with common name cn
// and returns its path.
func writeSelfSigned(t *testing.T, cn string, isCA bool) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: isCA, BasicConstraintsValid: true,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), cn+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExportApplyX509AndBuiltinHubs: X.509 attestations travel as their
// PEM certificates, and built-in hubs are created (and linked with their
// own new keys) by apply: export → apply on a fresh node → export again
// is identical, and applying again changes nothing.
func TestExportApplyX509AndBuiltinHubs(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dirA, _, _ := startLoggingServer(t, "127.0.21.3")
	dirB, _, _ := startLoggingServer(t, "127.0.21.4")
	on := func(dir string, args ...string) string {
		t.Helper()
		out, err := runCLI(t, append(args, "--data-dir", dir)...)
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	leaf := writeSelfSigned(t, "x509-dev", false)
	root := writeSelfSigned(t, "x509-root", true)
	on(dirA, "enrollment", "create", "--registration-id", "x509-dev", "--attestation-type", "x509", "--certificate-path", leaf)
	on(dirA, "enrollment-group", "create", "--enrollment-group-id", "x509-grp", "--attestation-type", "x509", "--certificate-path", root)
	on(dirA, "hub", "create", "fleet-hub", "--link")

	exported := on(dirA, "export")
	for _, want := range []string{"BEGIN CERTIFICATE", "builtinHubs:", "name: fleet-hub", "fleet-hub."} {
		if !strings.Contains(exported, want) {
			t.Errorf("export lacks %q:\n%s", want, exported)
		}
	}
	if strings.Contains(exported, "sha1Thumbprint") || strings.Contains(exported, "SharedAccessKey") {
		t.Errorf("export has certificate info or a hub key:\n%s", exported)
	}
	file := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}
	out := on(dirB, "apply", "-f", file)
	if !strings.Contains(out, "create built-in hub fleet-hub") || !strings.Contains(out, "link hub fleet-hub.") {
		t.Errorf("apply:\n%s", out)
	}
	if again := on(dirB, "export"); again != exported {
		t.Errorf("export after apply differs:\n--- from A\n%s\n--- from B\n%s", exported, again)
	}
	if out := on(dirB, "apply", "-f", file); !strings.Contains(out, "No changes") {
		t.Errorf("second apply:\n%s", out)
	}
	// The certificate is the one of the file: B shows the same thumbprint.
	showA := on(dirA, "enrollment", "show", "--registration-id", "x509-dev", "-o", "json", "--query", "attestation.x509.clientCertificates.primary.info.sha256Thumbprint")
	showB := on(dirB, "enrollment", "show", "--registration-id", "x509-dev", "-o", "json", "--query", "attestation.x509.clientCertificates.primary.info.sha256Thumbprint")
	if showA != showB || len(showA) < 40 {
		t.Errorf("thumbprints: A %q, B %q", showA, showB)
	}
	// The hub B created is B's, with its own keys, and linked with them.
	if out := on(dirB, "linked-hub", "list", "-o", "json"); !strings.Contains(out, "fleet-hub.") {
		t.Errorf("B's linked hubs:\n%s", out)
	}
}
