package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/server"
	"github.com/dpsd/dpsd/internal/webhooksig"
)

// startServerAt runs a dpsd in-process on addr's ports 0.
func startServerAt(t *testing.T, ip string) string {
	t.Helper()
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		DataDir: dataDir, HostName: "localhost",
		HTTPSAddr: ip + ":0", MQTTAddr: ip + ":0", AMQPAddr: ip + ":0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		cancel()
		t.Fatalf("start dpsd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return dataDir
}

// TestPoliciesAndWebhookTestCLI drives "allocation-policy", "webhook
// test" and "webhook-secret" against a real dpsd and real webhooks, all on
// 127.0.14.x.
func TestPoliciesAndWebhookTestCLI(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir := startServerAt(t, "127.0.14.60")
	run := func(args ...string) (string, error) {
		t.Helper()
		return runCLI(t, append(args, "--data-dir", dataDir)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// A webhook with one path per row, verifying dpsd's signature.
	secretOut := mustRun("webhook-secret", "show", "--show-secrets", "-o", "json")
	var signing admin.WebhookSigning
	if err := json.Unmarshal([]byte(secretOut), &signing); err != nil || !strings.HasPrefix(signing.Secret, "whsec_") {
		t.Fatalf("webhook-secret show --show-secrets: %v\n%s", err, secretOut)
	}
	if out := mustRun("webhook-secret", "show"); strings.Contains(out, "whsec_") {
		t.Errorf("webhook-secret show prints the secret unasked:\n%s", out)
	}
	const hub = "contoso-toasters-hub-1.example"
	l, err := net.Listen("tcp", "127.0.14.61:0")
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	wh := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		body, _ := io.ReadAll(r.Body)
		if webhooksig.Verify(signing.Secret, r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, timeNow(), 5*time.Minute) != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, `{"iotHubHostName":"`+hub+`","initialTwin":{"tags":{"deviceType":"toaster"}}}`)
		case "/elsewhere":
			io.WriteString(w, `{"iotHubHostName":"not-linked.example"}`)
		case "/empty":
			io.WriteString(w, `{"iotHubHostName":null}`)
		case "/busy":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			http.Error(w, "Unrecognized device registration.", http.StatusBadRequest)
		}
	})}}
	wh.Start()
	t.Cleanup(wh.Close)

	mustRun("linked-hub", "create", "--connection-string", "HostName="+hub+";SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5")
	for _, g := range []string{"ok", "empty", "elsewhere", "busy", "refuse"} {
		mustRun("enrollment-group", "create", "--enrollment-group-id", "g-"+g, "--attestation-type", "symmetrickey",
			"--allocation-policy", "custom", "--webhook-url", wh.URL+"/"+g, "--iot-hubs", hub)
	}

	// Policies: a bad one is refused with where it is wrong.
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.cel")
	os.WriteFile(bad, []byte("{\"iotHubHostName\":\n  registrationId + 1}"), 0o600)
	if out, err := run("allocation-policy", "create", "broken", "--file", bad); err == nil || !strings.Contains(err.Error(), "line 2, column 18") || !strings.Contains(err.Error(), "400004") {
		t.Errorf("allocation-policy create of a bad policy: %v\n%s", err, out)
	}
	contoso, _ := filepath.Abs(filepath.Join("..", "..", "examples", "policies", "contoso.cel"))
	if out := mustRun("allocation-policy", "create", "contoso", "--file", contoso); !strings.Contains(out, "policy:contoso") {
		t.Errorf("allocation-policy create:\n%s", out)
	}
	if out := mustRun("allocation-policy", "show", "contoso"); !strings.Contains(out, `registrationId.contains("-contoso-tstrsd-007")`) {
		t.Errorf("allocation-policy show lacks the source:\n%s", out)
	}
	if out := mustRun("allocation-policy", "list"); !strings.Contains(out, "contoso") {
		t.Errorf("allocation-policy list:\n%s", out)
	}
	if _, err := run("allocation-policy", "update", "contoso", "--file", contoso, "--etag", "stale"); err == nil || !strings.Contains(err.Error(), "412") {
		t.Errorf("update with a stale etag: %v", err)
	}
	if _, err := run("allocation-policy", "update", "nobody", "--file", contoso); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("update of a missing policy: %v", err)
	}
	mustRun("allocation-policy", "update", "contoso", "--file", contoso)
	mustRun("enrollment-group", "create", "--enrollment-group-id", "g-policy", "--attestation-type", "symmetrickey",
		"--allocation-policy", "custom", "--webhook-url", "policy:contoso", "--iot-hubs", hub)

	// webhook test: one row each, nothing registered.
	tests := []struct {
		group, regID, outcome, row string
		exit1                      bool
	}{
		{"g-ok", "breakroom499-contoso-tstrsd-007", "assigned", "assigned to " + hub, false},
		{"g-empty", "dev-1", "failed", "400208", true},
		{"g-elsewhere", "dev-4", "failed", "400210", true},
		{"g-refuse", "dev-2", "failed", "400207", true},
		{"g-busy", "dev-3", "retried", "retried", true},
		{"g-policy", "breakroom499-contoso-tstrsd-007", "assigned", "assigned to " + hub, false},
		{"g-policy", "lobby-contoso-fridge-001", "failed", "400207", true},
	}
	for _, tt := range tests {
		before := calls
		out, err := run("webhook", "test", "--enrollment-group-id", tt.group, "--registration-id", tt.regID, "--payload", `{"a":1}`, "-o", "json")
		var ee *exitError
		if (err != nil) != tt.exit1 || (err != nil && (!errors.As(err, &ee) || ee.code != 1)) {
			t.Errorf("%s %s: err %v; want exit 1 = %v\n%s", tt.group, tt.regID, err, tt.exit1, out)
		}
		var res admin.WebhookTestResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s: %v\n%s", tt.group, err, out)
		}
		if res.Outcome != tt.outcome || !strings.Contains(res.Row, tt.row) || !strings.Contains(string(res.Request), tt.regID) || !strings.Contains(compactJSON(res.Request), `"payload":{"a":1}`) {
			t.Errorf("%s %s: outcome %s, row %q, request %s; want %s, row %q, the request", tt.group, tt.regID, res.Outcome, res.Row, compactJSON(res.Request), tt.outcome, tt.row)
		}
		if tt.group != "g-policy" && calls != before+1 {
			t.Errorf("%s: webhook called %d times; want once", tt.group, calls-before)
		}
		if tt.group == "g-refuse" && !strings.Contains(res.WebhookText, "Unrecognized") {
			t.Errorf("%s: webhook text %q", tt.group, res.WebhookText)
		}
		if tt.group == "g-policy" && tt.outcome == "failed" && !strings.Contains(res.Error, "Unrecognized device registration.") {
			t.Errorf("%s: the policy's reason is missing: %+v", tt.group, res)
		}
		if _, err := run("registration", "show", "--registration-id", tt.regID); err == nil {
			t.Errorf("webhook test registered %s", tt.regID)
		}
	}
	if out := mustRun("webhook", "test", "--enrollment-group-id", "g-ok", "--registration-id", "x-contoso-tstrsd-007"); !strings.Contains(out, "Outcome:") || !strings.Contains(out, `"deviceType":"toaster"`) {
		t.Errorf("webhook test (table):\n%s", out)
	}

	// A rotation: the webhook with the old secret still accepts during
	// the overlap.
	mustRun("webhook-secret", "rotate", "--overlap", "1h")
	if _, err := run("webhook", "test", "--enrollment-group-id", "g-ok", "--registration-id", "y-contoso-tstrsd-007"); err != nil {
		t.Errorf("after a rotation with overlap: %v", err)
	}
	mustRun("webhook-secret", "rotate", "--overlap", "0s")
	out, _ := run("webhook", "test", "--enrollment-group-id", "g-ok", "--registration-id", "z-contoso-tstrsd-007", "-o", "json")
	if !strings.Contains(out, "400209") {
		t.Errorf("after a rotation without overlap, the old secret still verifies:\n%s", out)
	}
}

var timeNow = time.Now
