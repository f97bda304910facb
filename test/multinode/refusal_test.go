package multinode

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/cli"
	"github.com/dpsd/dpsd/internal/sas"
)

// TestRefusalFoundOnAnotherNode: a device refused by node A is told a
// tracking id; "dpsd registration show --tracking-id" asked of node B
// finds the refusal, with A's reason and name, and so does a search of
// B by registration id.
func TestRefusalFoundOnAnotherNode(t *testing.T) {
	c := startCluster(t, clusterOptions{nodes: 2})
	a, b := c.nodes[0], c.nodes[1]
	c.createGroup(t, a, "refusal-group")

	const id = "refused-on-a-01"
	code, body := c.deviceRequestBody(t, a, sas.GenerateKey(64), id, http.MethodPut, "/register")
	if code != http.StatusUnauthorized {
		t.Fatalf("register with a wrong key on %s: HTTP %d %s, want 401", a.name, code, body)
	}
	var answer dps.Error
	if err := json.Unmarshal(body, &answer); err != nil || answer.TrackingID == "" {
		t.Fatalf("401 answer %s: no tracking id (%v)", body, err)
	}

	// A writes its refusals in the background: ask B until it knows, bounded.
	var found admin.Refusals
	var out string
	var err error
	for range 100 {
		// Until B knows, the command prints an empty list and exits 1.
		out, err = runCLI(t, "registration", "show", "--tracking-id", answer.TrackingID, "-o", "json", "--data-dir", b.DataDir, "--ca-file", c.certs.CAFile)
		if err != nil && !strings.Contains(err.Error(), "no refused request") {
			t.Fatalf("registration show --tracking-id on %s: %v", b.name, err)
		}
		if err := json.Unmarshal([]byte(out), &found); err != nil {
			t.Fatalf("registration show --tracking-id on %s: %q: %v", b.name, out, err)
		}
		if len(found.Refusals) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(found.Refusals) != 1 {
		t.Fatalf("registration show --tracking-id on %s: %q", b.name, out)
	}
	r := found.Refusals[0]
	if r.RegistrationID != id || r.TrackingID != answer.TrackingID || r.Node == "" || r.Reason == "" || r.Transport != "https" {
		t.Errorf("refusal found on %s = %+v", b.name, r)
	}
	if strings.Contains(r.Node, b.IP) {
		t.Errorf("refusal names node %q, want A (%s)", r.Node, a.IP)
	}

	// By registration id on B too.
	out, err = runCLI(t, "registration", "show", "--registration-id", id, "--data-dir", b.DataDir, "--ca-file", c.certs.CAFile)
	if !strings.Contains(out, answer.TrackingID) {
		t.Errorf("registration show %s on %s (%v) lacks tracking id %s:\n%s", id, b.name, err, answer.TrackingID, out)
	}
}

// runCLI runs the dpsd command line in this process and returns what it
// printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	root := cli.NewRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}
