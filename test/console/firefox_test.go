package console

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/testenv"
)

// firefoxPath is Debian's Firefox ESR, which scripts/install-test-deps.sh
// installs.
const firefoxPath = "/usr/bin/firefox-esr"

// TestConsoleFirefox runs the console's main path in Firefox: sign in,
// create a group, fit a phone's width, refuse inline script, sign out, with
// no request leaving the node and no script error.
func TestConsoleFirefox(t *testing.T) {
	if _, err := os.Stat(firefoxPath); err != nil {
		testenv.Missing(t, "Firefox (%s): %v", firefoxPath, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.Missing(t, "node not found on PATH")
	}
	sdk := filepath.Join(testenv.RepoRoot(t), "test", "sdk")
	if _, err := os.Stat(filepath.Join(sdk, "node_modules", "puppeteer-core")); err != nil {
		testenv.Missing(t, "puppeteer-core not installed in test/sdk (scripts/install-test-deps.sh): %v", err)
	}
	n := startNode(t, false)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "console-firefox.js", n.Info.HTTPSEndpoint, n.Info.ServiceConnectionString, "firefox-group")
	cmd.Dir = sdk
	cmd.Env = append(os.Environ(), "FIREFOX="+firefoxPath, "HOME="+testenv.Dir(t, "firefox-home-"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("console-firefox.js: %v\n%s\n%s", err, out, stderr.String())
	}
	var seen struct {
		Browser    string         `json:"browser"`
		IDScope    string         `json:"idScope"`
		Steps      []string       `json:"steps"`
		OffOrigin  []string       `json:"offOrigin"`
		PageErrors []string       `json:"pageErrors"`
		Overflow   map[string]int `json:"overflow"`
		InlineRan  bool           `json:"inlineRan"`
	}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			if err := json.Unmarshal([]byte(v), &seen); err != nil {
				t.Fatalf("result %q: %v", v, err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("console-firefox.js printed no result:\n%s\n%s", out, stderr.String())
	}
	t.Logf("%s: %s", seen.Browser, strings.Join(seen.Steps, ", "))
	if seen.IDScope != n.Info.IDScope {
		t.Errorf("overview ID scope %q, want %q", seen.IDScope, n.Info.IDScope)
	}
	if want := []string{"signin page", "signed in", "group created", "phone width", "signed out"}; strings.Join(seen.Steps, ",") != strings.Join(want, ",") {
		t.Errorf("steps %v, want %v", seen.Steps, want)
	}
	for route, px := range seen.Overflow {
		if px > 0 {
			t.Errorf("%s scrolls %d px sideways at 375 px", route, px)
		}
	}
	if seen.InlineRan {
		t.Error("an inline script ran in Firefox despite the Content-Security-Policy")
	}
	if len(seen.OffOrigin) > 0 {
		t.Errorf("requests left the node: %v", seen.OffOrigin)
	}
	// The only error allowed is Firefox's report of the inline script the
	// test injected, which is the proof the policy held.
	blocked := 0
	for _, e := range seen.PageErrors {
		if strings.Contains(e, "Content-Security-Policy") && strings.Contains(e, "inline script") {
			blocked++
			continue
		}
		t.Errorf("script error: %s", e)
	}
	if blocked != 1 {
		t.Errorf("Firefox reported %d blocked inline scripts, want the 1 the test injected", blocked)
	}
	service(t, n, "GET", "/enrollmentGroups/firefox-group", "", 200)
}
