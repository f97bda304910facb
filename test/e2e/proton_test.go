package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/testenv"
)

// debianPython is Debian's interpreter, which finds Debian's
// python3-qpid-proton; a python3 earlier on PATH may be another build.
const debianPython = "/usr/bin/python3"

// TestQpidProtonAMQP registers a device over AMQP with Apache Qpid Proton
// (Debian's python3-qpid-proton, installed by scripts/install-test-deps.sh):
// an AMQP 1.0 implementation independent of dpsd's and of the Azure SDKs'.
// A wrong key is refused with a rejected request.
func TestQpidProtonAMQP(t *testing.T) {
	t.Parallel()
	if err := exec.Command(debianPython, "-c", "import proton").Run(); err != nil {
		testenv.Missing(t, "%s cannot import proton (python3-qpid-proton): %v", debianPython, err)
	}
	srv := startServerIn(t, amqpPrefix)
	key := make([]byte, 32)
	rand.Read(key)
	keyB64 := base64.StdEncoding.EncodeToString(key)
	dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "proton-dev-1",
		"--attestation-type", "symmetricKey", "--primary-key", keyB64, "--secondary-key", keyB64,
		"--allocation-policy", "static", "--iot-hubs", srv.Hub)

	script, err := filepath.Abs(filepath.Join("testdata", "proton_register.py"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(regID, key string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, debianPython, script, srv.IP, "5671", srv.Info.CACertFile, srv.Info.IDScope, regID, key)
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("proton_register.py %s: %v\n%s", regID, err, out)
		}
		return string(out)
	}

	out := run("proton-dev-1", keyB64)
	_, result, ok := strings.Cut(out, "RESULT ")
	if !ok {
		t.Fatalf("no RESULT line:\n%s", out)
	}
	var op struct {
		OperationID       string `json:"operationId"`
		Status            string `json:"status"`
		RegistrationState struct {
			RegistrationID string `json:"registrationId"`
			AssignedHub    string `json:"assignedHub"`
			DeviceID       string `json:"deviceId"`
			Status         string `json:"status"`
		} `json:"registrationState"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(result)), &op); err != nil {
		t.Fatalf("RESULT is not an operation: %v\n%s", err, out)
	}
	rs := op.RegistrationState
	if op.Status != "assigned" || op.OperationID == "" || rs.AssignedHub != srv.Hub || rs.DeviceID != "proton-dev-1" || rs.RegistrationID != "proton-dev-1" {
		t.Errorf("registration over Qpid Proton: %+v", op)
	}

	wrong := base64.StdEncoding.EncodeToString(make([]byte, 32))
	if out := run("proton-dev-1", wrong); !strings.Contains(out, "REJECTED") {
		t.Errorf("a wrong key was not refused:\n%s", out)
	}
}
