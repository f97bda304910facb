package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/testenv"
)

// TestX509Simulator is the README's X.509 walk-through with dpsd alone: a
// test PKI from "dpsd cert", an enrollment group on the intermediate, and
// "dpsd device provision --certificate" over every transport; a device of
// another PKI is refused.
func TestX509Simulator(t *testing.T) {
	srv := startServer(t)
	dir := t.TempDir()
	cert := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, testenv.Binary(t), append([]string{"cert"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("dpsd cert %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	cert("root", "--out", p("root"))
	cert("intermediate", "--ca", p("root"), "--out", p("intermediate"))
	cert("device", "--ca", p("intermediate"), "--common-name", "x509-sim-001", "--out", p("x509-sim-001"))
	cert("root", "--out", p("other-root"))
	cert("device", "--ca", p("other-root"), "--common-name", "x509-sim-002", "--out", p("x509-sim-002"))

	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "x509-sim",
		"--attestation-type", "x509", "--certificate-path", p("intermediate.cert.pem"),
		"--allocation-policy", "static", "--iot-hubs", srv.Hub)

	for _, tr := range []string{"https", "mqtt", "mqtt-ws"} {
		out := dpsdCLI(t, srv, "device", "provision", "--transport", tr,
			"--certificate", p("x509-sim-001-full-chain.cert.pem"), "--key", p("x509-sim-001.key.pem"))
		want := "Registration Information received from service: " + srv.Hub + ", deviceId: x509-sim-001"
		if !strings.Contains(out, want) {
			t.Errorf("%s: output lacks %q:\n%s", tr, want, out)
		}
	}
	show := dpsdCLI(t, srv, "hub", "device", "show", "--hub-name", "e2e-hub", "--device-id", "x509-sim-001")
	if !strings.Contains(show, "certificateAuthority") {
		t.Errorf("hub identity is not CA-authenticated:\n%s", show)
	}

	out, errOut, err := dpsdCLIResult(t, srv, "device", "provision",
		"--certificate", p("x509-sim-002-full-chain.cert.pem"), "--key", p("x509-sim-002.key.pem"))
	if err == nil || !strings.Contains(errOut, "401002") {
		t.Errorf("a device of an unknown PKI: err=%v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	if _, _, err := dpsdCLIResult(t, srv, "registration", "show", "--registration-id", "x509-sim-002"); err == nil {
		t.Error("a refused device has a registration record")
	}
}
