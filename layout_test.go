package dpsd_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/dpsd/dpsd/"

// TestDependencyRules pins the layout's dependency rules on what each
// package links (go list -deps, tests excluded), so a shortcut that would
// blur the map fails here rather than in review.
func TestDependencyRules(t *testing.T) {
	deps := listDeps(t)
	for pkg, ds := range deps {
		p := strings.TrimPrefix(pkg, module)
		if p != "internal/testenv" && slices.Contains(ds, "internal/testenv") {
			t.Errorf("%s links internal/testenv: the test harness is for tests only", p)
		}
		switch {
		case strings.HasPrefix(p, "api/"):
			// Wire types users import bring nothing of dpsd with them.
			for _, d := range ds {
				if !strings.HasPrefix(d, "api/") {
					t.Errorf("%s links %s: api/ imports nothing of dpsd outside api/", p, d)
				}
			}
		case strings.HasPrefix(p, "internal/transport/"):
			// A transport decodes and encodes its wire only; the engine
			// decides. The WebSocket adapter carries other transports'
			// byte streams, so they may use it.
			for _, d := range ds {
				if strings.HasPrefix(d, "internal/transport/") && d != "internal/transport/wsconn" {
					t.Errorf("%s links %s: transports do not import each other", p, d)
				}
			}
		case p == "internal/hub/azurehub":
			for _, d := range ds {
				if d != "internal/sas" {
					t.Errorf("%s links %s: the Azure IoT hub REST client is a leaf (sas only)", p, d)
				}
			}
		case strings.HasPrefix(p, "internal/hub/builtinhub"):
			for _, d := range ds {
				if d == "internal/provision" || d == "internal/hub" {
					t.Errorf("%s links %s: the built-in hubs do not link the engine", p, d)
				}
			}
		case p == "internal/tlsmux":
			// The listener splitter sits in front of every server.
			for _, d := range ds {
				if d != "internal/connlimit" {
					t.Errorf("%s links %s: tlsmux knows nothing of the servers it splits for", p, d)
				}
			}
		case p == "internal/provision":
			for _, d := range ds {
				if strings.HasPrefix(d, "internal/transport/") || strings.HasPrefix(d, "internal/hub") || d == "internal/server" {
					t.Errorf("%s links %s: the engine knows nothing of its callers or of hubs", p, d)
				}
			}
		case p == "internal/allocpolicy":
			// Policies are data and a CEL program: they know nothing of
			// who evaluates them (the allocator) or serves them.
			for _, d := range ds {
				if d == "internal/provision" || d == "internal/allocate" || d == "internal/server" || strings.HasPrefix(d, "internal/transport/") {
					t.Errorf("%s links %s: allocation policies know nothing of the engine or its callers", p, d)
				}
			}
		case p == "internal/tpm":
			// The TPM challenge is cryptography over wire bytes: a leaf.
			if len(ds) > 0 {
				t.Errorf("%s links %v: the TPM challenge package imports nothing of dpsd", p, ds)
			}
		case p == "internal/refusal":
			// The engine and every transport use it: it must not lead back.
			for _, d := range ds {
				if strings.HasPrefix(d, "internal/transport/") || d == "internal/provision" || d == "internal/server" {
					t.Errorf("%s links %s: refusals are a leaf the engine and the transports share", p, d)
				}
			}
		case p == "internal/store":
			if len(ds) > 0 {
				t.Errorf("%s links %v: the storage interface imports nothing of dpsd", p, ds)
			}
		case strings.HasPrefix(p, "client/"):
			for _, d := range ds {
				if d == "internal/server" || d == "internal/provision" || strings.HasPrefix(d, "internal/store") {
					t.Errorf("%s links %s: clients reach the server through the wire only", p, d)
				}
			}
		case p == "internal/console":
			// The console reaches the node through its HTTP handlers
			// only, so they alone decide what a session may do. (It
			// links the store through instance, for the policy type.)
			for _, d := range directImports(t, pkg) {
				if d == "internal/server" || d == "internal/provision" || strings.HasPrefix(d, "internal/store") ||
					strings.HasPrefix(d, "internal/transport/") || strings.HasPrefix(d, "internal/enroll") {
					t.Errorf("%s links %s: the console goes through the node's HTTP handlers", p, d)
				}
			}
		case p == "cmd/dpsd":
			if !slices.Equal(directImports(t, pkg), []string{"internal/cli"}) {
				t.Errorf("%s imports %v: main only calls internal/cli", p, directImports(t, pkg))
			}
		}
	}
	for _, must := range []string{"api/dps", "internal/provision", "internal/hub/azurehub", "internal/hub/builtinhub", "internal/allocpolicy", "internal/console", "internal/tpm", "cmd/dpsd"} {
		if _, ok := deps[module+must]; !ok {
			t.Errorf("package %s not found: update the rules with the layout", must)
		}
	}
}

// listDeps returns, for every package of the module, the module's packages
// it links (relative to the module path).
func listDeps(t *testing.T) map[string][]string {
	t.Helper()
	out := goList(t, "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "./...")
	m := make(map[string][]string)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var own []string
		for _, d := range f[1:] {
			if strings.HasPrefix(d, module) {
				own = append(own, strings.TrimPrefix(d, module))
			}
		}
		m[f[0]] = own
	}
	if len(m) == 0 {
		t.Fatal("go list found no packages")
	}
	return m
}

// directImports returns the module's packages that pkg imports itself.
func directImports(t *testing.T, pkg string) []string {
	t.Helper()
	var own []string
	for _, d := range strings.Fields(string(goList(t, "-f", `{{join .Imports " "}}`, pkg))) {
		if strings.HasPrefix(d, module) {
			own = append(own, strings.TrimPrefix(d, module))
		}
	}
	return own
}

func goList(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	return out
}
