package testenv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuildTimeout bounds one go build.
const BuildTimeout = 8 * time.Minute

var (
	root string // the suite's temporary directory, set by Main

	buildMu sync.Mutex
	builds  = map[string]*build{}
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Main runs a suite's tests (call it from TestMain) with a temporary
// directory of its own, removed afterwards unless DPSD_<SUITE>_KEEP is set.
func Main(m *testing.M, suite string) {
	dir, err := os.MkdirTemp("", "dpsd-"+suite+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, suite+":", err)
		os.Exit(1)
	}
	root = dir
	code := m.Run()
	keep := "DPSD_" + strings.ToUpper(suite) + "_KEEP"
	if os.Getenv(keep) == "" {
		os.RemoveAll(root)
	} else {
		fmt.Fprintln(os.Stderr, suite+": kept", root)
	}
	os.Exit(code)
}

// Dir returns a new directory under the suite's temporary directory, named
// after pattern as os.MkdirTemp does.
func Dir(t testing.TB, pattern string) string {
	t.Helper()
	if root == "" {
		t.Fatal("testenv: Main was not called from TestMain")
	}
	dir, err := os.MkdirTemp(root, pattern)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// Path returns name under the suite's temporary directory.
func Path(name string) string { return filepath.Join(root, name) }

// RepoRoot returns the module root: the nearest directory above the
// working directory (the test's package) that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build builds the main package pkg (relative to the module root, e.g.
// "./cmd/dpsd") once per test process and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	b := builds[pkg]
	if b == nil {
		b = &build{}
		builds[pkg] = b
	}
	buildMu.Unlock()
	b.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goroot := os.Getenv("GOROOT")
			if goroot == "" {
				b.err = fmt.Errorf("go tool not found: %w", err)
				return
			}
			goTool = filepath.Join(goroot, "bin", "go")
		}
		out := Path(filepath.Join("bin", filepath.Base(pkg)))
		ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, pkg)
		cmd.Dir = RepoRoot(t)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, buf.String())
			return
		}
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Binary returns the dpsd binary, built once per test process.
func Binary(t testing.TB) string { return Build(t, "./cmd/dpsd") }

// InCI reports whether missing prerequisites must fail rather than skip:
// CI sets CI.
func InCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// Missing skips the test outside CI and fails it in CI.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("prerequisite missing (CI is set, so this fails): %s", msg)
	}
	t.Skipf("skipping: %s (run scripts/install-test-deps.sh; in CI this fails)", msg)
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
