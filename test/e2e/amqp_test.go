package e2e

import (
	"context"
	"encoding/base64"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/testenv"
)

// The AMQP suites run their servers on 127.0.7.N (amqpPrefix), apart from
// the other suites' 127.0.3.N.
const amqpPrefix = "127.0.7"

func TestDeviceSDKAMQP(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServerIn(t, amqpPrefix), "device-amqp.test.js")
}

func TestDeviceSDKAMQPWebSockets(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServerIn(t, amqpPrefix), "device-amqpws.test.js")
}

// TestDeviceCLIAMQP: the Go device client (client/device, over
// github.com/Azure/go-amqp) through "dpsd device provision --transport amqp
// and amqp-ws": a group member with a symmetric key, an X.509 device of a
// group, and a wrong key refused with 401.
func TestDeviceCLIAMQP(t *testing.T) {
	t.Parallel()
	srv := startServerIn(t, amqpPrefix)
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
	cert("device", "--ca", p("root"), "--common-name", "amqp-x509-001", "--out", p("amqp-x509-001"))
	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "amqp-x509",
		"--attestation-type", "x509", "--certificate-path", p("root.cert.pem"),
		"--allocation-policy", "static", "--iot-hubs", srv.Hub)
	groupKey := base64.StdEncoding.EncodeToString([]byte("an amqp test group key of 32 b.."))
	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "amqp-sas",
		"--attestation-type", "symmetricKey", "--primary-key", groupKey, "--secondary-key", groupKey,
		"--allocation-policy", "static", "--iot-hubs", srv.Hub)

	for _, tr := range []string{"amqp", "amqp-ws"} {
		id := "amqp-cli-" + tr
		out := dpsdCLI(t, srv, "device", "provision", "--transport", tr, "--registration-id", id, "--group-key", groupKey)
		if want := "Registration Information received from service: " + srv.Hub + ", deviceId: " + id; !strings.Contains(out, want) {
			t.Errorf("%s symmetric key: output lacks %q:\n%s", tr, want, out)
		}
		out = dpsdCLI(t, srv, "device", "provision", "--transport", tr,
			"--certificate", p("amqp-x509-001-full-chain.cert.pem"), "--key", p("amqp-x509-001.key.pem"))
		if want := "Registration Information received from service: " + srv.Hub + ", deviceId: amqp-x509-001"; !strings.Contains(out, want) {
			t.Errorf("%s X.509: output lacks %q:\n%s", tr, want, out)
		}
		out, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--transport", tr,
			"--registration-id", "amqp-cli-wrong-"+tr, "--symmetric-key", groupKey)
		if err == nil || !strings.Contains(errOut, "401") {
			t.Errorf("%s wrong key: err=%v\nstdout:\n%s\nstderr:\n%s", tr, err, out, errOut)
		}
	}
}
