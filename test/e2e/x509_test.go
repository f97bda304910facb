package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/testenv"
)

// TestX509SDK: X.509 attestation end to end. The test PKI is made with
// "dpsd cert", a CA is registered and verified (proof of possession) with
// "dpsd certificate", and x509.test.js provisions devices with the official
// Node SDKs over HTTPS and MQTT (individual certificate, a group of an
// intermediate, a verified CA) and connects them to the built-in hub with
// their certificates.
//
// It does not run in parallel with the other suites because it hands the
// Node tests their PKI through the environment (t.Setenv).
func TestX509SDK(t *testing.T) {
	runX509SDK(t, "127.0.3", []string{"http", "mqtt", "mqttws"})
}

// TestX509SDKAMQP is TestX509SDK over AMQP and AMQP over WebSockets.
func TestX509SDKAMQP(t *testing.T) {
	runX509SDK(t, amqpPrefix, []string{"amqp", "amqpws"})
}

// runX509SDK runs x509.test.js with the provisioning transports given,
// against a server on an address in prefix.
func runX509SDK(t *testing.T, prefix string, transports []string) {
	nodeTool(t)
	srv := startServerIn(t, prefix)
	bin := testenv.Binary(t)
	dir, err := os.MkdirTemp(testenv.Path(""), "x509-")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	p := func(name string) string { return filepath.Join(dir, name) }

	// The PKI, as Azure's sample scripts lay it out.
	run("cert", "root", "--out", p("root"))
	run("cert", "intermediate", "--ca", p("root"), "--out", p("intermediate"))
	run("cert", "root", "--common-name", "dpsd e2e Solo Root", "--out", p("solo-root"))
	run("cert", "root", "--common-name", "dpsd e2e Stranger Root", "--out", p("stranger-root"))
	run("cert", "root", "--common-name", "dpsd e2e Verified CA", "--out", p("ca-root"))
	run("cert", "intermediate", "--ca", p("ca-root"), "--common-name", "dpsd e2e CA Intermediate", "--out", p("ca-intermediate"))
	devices := map[string]string{"x509-revoked": "intermediate"}
	for _, tr := range transports {
		devices["x509-individual-"+tr] = "solo-root"
		devices["x509-inter-"+tr] = "intermediate"
		devices["x509-ca-"+tr] = "ca-intermediate"
		devices["x509-stranger-"+tr] = "stranger-root"
	}
	for id, ca := range devices {
		run("cert", "device", "--ca", p(ca), "--common-name", id, "--out", p(id))
	}

	// Proof of possession, both ways: in one step with the CA's key, and
	// by hand with a verification code and "dpsd cert verification".
	dd := []string{"--data-dir", srv.DataDir}
	const caName = "e2e-ca"
	run(append([]string{"certificate", "create", "--certificate-name", caName, "--path", p("ca-root.cert.pem")}, dd...)...)
	if c := showCertificate(t, run, dd, caName); c.Properties.IsVerified {
		t.Fatalf("a new certificate is verified: %+v", c)
	}
	run(append([]string{"certificate", "verify", "--certificate-name", caName, "--ca-key", p("ca-root.key.pem")}, dd...)...)
	if c := showCertificate(t, run, dd, caName); !c.Properties.IsVerified {
		t.Fatalf("not verified after verify --ca-key: %+v", c)
	}

	run(append([]string{"certificate", "create", "--certificate-name", "e2e-manual", "--path", p("root.cert.pem")}, dd...)...)
	var gen admin.Certificate
	if err := json.Unmarshal(run(append([]string{"certificate", "generate-verification-code", "--certificate-name", "e2e-manual", "-o", "json"}, dd...)...), &gen); err != nil || gen.Properties.VerificationCode == "" {
		t.Fatalf("generate-verification-code: %+v %v", gen, err)
	}
	run("cert", "verification", "--ca", p("root"), "--code", gen.Properties.VerificationCode, "--out", p("verification"))
	run(append([]string{"certificate", "verify", "--certificate-name", "e2e-manual", "--path", p("verification.cert.pem")}, dd...)...)
	if c := showCertificate(t, run, dd, "e2e-manual"); !c.Properties.IsVerified {
		t.Fatalf("not verified after verify --path: %+v", c)
	}
	run(append([]string{"certificate", "delete", "--certificate-name", "e2e-manual"}, dd...)...)
	list := run(append([]string{"certificate", "list", "-o", "json"}, dd...)...)
	if strings.Contains(string(list), "e2e-manual") || !strings.Contains(string(list), caName) {
		t.Fatalf("certificate list after delete:\n%s", list)
	}

	// The built-in hub's address: its host name does not resolve.
	var h struct {
		Address string `json:"address"`
	}
	out := run(append([]string{"hub", "show", "e2e-hub", "-o", "json"}, dd...)...)
	if err := json.Unmarshal(out, &h); err != nil || h.Address == "" {
		t.Fatalf("dpsd hub show: %s (%v)", out, err)
	}

	t.Setenv("DPSD_X509_DIR", dir)
	t.Setenv("DPSD_X509_CA", caName)
	t.Setenv("DPSD_HUB_ADDR", h.Address)
	t.Setenv("DPSD_X509_TRANSPORTS", strings.Join(transports, ","))
	runNodeTests(t, srv, "x509.test.js")
}

func showCertificate(t *testing.T, run func(...string) []byte, dd []string, name string) admin.Certificate {
	t.Helper()
	var c admin.Certificate
	out := run(append([]string{"certificate", "show", "--certificate-name", name, "-o", "json"}, dd...)...)
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("dpsd certificate show: %v\n%s", err, out)
	}
	if c.Name != name {
		t.Fatalf("dpsd certificate show answered %s", out)
	}
	return c
}
