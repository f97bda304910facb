package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/testenv"
)

const (
	defaultNodeTimeout = 6 * time.Minute
	depsTimeout        = 8 * time.Minute
	resultPrefix       = "##dpsd-result "
)

var (
	depsOnce sync.Once
	depsErr  error
)

// nodeTool returns the path of node and makes sure test/sdk/node_modules is
// installed and current (via scripts/install-test-deps.sh). Without node the
// test skips, or fails in CI.
func nodeTool(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.Missing(t, "node not found on PATH")
	}
	depsOnce.Do(func() {
		root := testenv.RepoRoot(t)
		sdk := filepath.Join(root, "test", "sdk")
		stamp, errStamp := os.Stat(filepath.Join(sdk, "node_modules", ".package-lock.json"))
		lock, errLock := os.Stat(filepath.Join(sdk, "package-lock.json"))
		if errLock != nil {
			depsErr = errLock
			return
		}
		if errStamp == nil && !lock.ModTime().After(stamp.ModTime()) {
			return
		}
		// node is there but the packages are not (or are stale): install them.
		ctx, cancel := context.WithTimeout(context.Background(), depsTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "install-test-deps.sh"))
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			depsErr = errors.New("scripts/install-test-deps.sh: " + err.Error() + "\n" + buf.String())
		}
	})
	if depsErr != nil {
		testenv.Missing(t, "test/sdk packages not installed: %v", depsErr)
	}
	return node
}

type nodeResult struct {
	Name    string  `json:"name"`
	Nesting int     `json:"nesting"`
	Status  string  `json:"status"`
	Ms      float64 `json:"ms"`
	Error   string  `json:"error"`
}

func nodeTimeout() time.Duration {
	if v := os.Getenv("DPSD_E2E_NODE_TIMEOUT"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return defaultNodeTimeout
}

// runNodeTests runs one test/sdk/*.test.js file against srv with node's
// built-in test runner, streams its output into the test log, and reports
// each node test as a Go subtest.
func runNodeTests(t *testing.T, srv *dpsdServer, file string) {
	t.Helper()
	runNodeTestsEnv(t, srv, file)
}

// runNodeTestsEnv is runNodeTests with extra environment for node.
func runNodeTestsEnv(t *testing.T, srv *dpsdServer, file string, env ...string) {
	t.Helper()
	node := nodeTool(t)
	sdk := filepath.Join(testenv.RepoRoot(t), "test", "sdk")

	ctx, cancel := context.WithTimeout(context.Background(), nodeTimeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, node,
		"--test-reporter=./lib/reporter.js", "--test-reporter-destination=stdout",
		file)
	cmd.Dir = sdk
	cmd.Env = append(os.Environ(),
		"DPSD_INFO="+srv.InfoPath,
		"NODE_EXTRA_CA_CERTS="+srv.Info.CACertFile,
		"DPSD_TEST_HUB="+srv.Hub,
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = 10 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("running node %s (DPSD_INFO=%s NODE_EXTRA_CA_CERTS=%s)", file, srv.InfoPath, srv.Info.CACertFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			t.Log("node stderr: " + sc.Text())
		}
	}()

	var results []nodeResult
	var timings []string
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, resultPrefix):
			var r nodeResult
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, resultPrefix)), &r); err != nil {
				t.Errorf("bad result line %q: %v", line, err)
				continue
			}
			results = append(results, r)
			reportNodeResult(t, r)
		case strings.HasPrefix(line, "TIMING"):
			timings = append(timings, line)
			t.Log(line)
		default:
			t.Log(line)
		}
	}
	io.Copy(io.Discard, stdout)
	wg.Wait()
	waitErr := cmd.Wait()

	if len(timings) > 0 {
		t.Logf("registration timings (end-to-end, per registration, not asserted):\n  %s", strings.Join(timings, "\n  "))
	}
	failed := 0
	for _, r := range results {
		if r.Status == "fail" {
			failed++
		}
	}
	t.Logf("node %s: %d tests, %d failed", file, len(results), failed)
	switch {
	case ctx.Err() != nil:
		t.Errorf("node %s did not finish within %v and was killed", file, nodeTimeout())
	case len(results) == 0:
		t.Errorf("node %s reported no test results (exit: %v)", file, waitErr)
	case waitErr != nil && failed == 0:
		t.Errorf("node %s exited with %v although no test failed", file, waitErr)
	}
}

// reportNodeResult turns one node test result into a Go subtest.
func reportNodeResult(t *testing.T, r nodeResult) {
	t.Run(r.Name, func(t *testing.T) {
		switch r.Status {
		case "pass":
			t.Logf("passed in %.0f ms", r.Ms)
		case "skip":
			t.Skip("skipped by node")
		default:
			t.Errorf("failed after %.0f ms:\n%s", r.Ms, r.Error)
		}
	})
}

// The suites run in parallel, each against a dpsd of its own.

func TestServiceSDK(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	srv := startServer(t)
	t.Run("dpsd info -o json matches info.json", func(t *testing.T) {
		checkInfoCommand(t, srv)
	})
	runNodeTests(t, srv, "service.test.js")
}

func TestDeviceSDKHTTP(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServer(t), "device-http.test.js")
}

func TestDeviceSDKMQTT(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServer(t), "device-mqtt.test.js")
}

func TestDeviceSDKMQTTWebSockets(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServer(t), "device-mqttws.test.js")
}

// TestDeviceWire checks wire details of the device API that other official
// SDKs (C#, C, Python, IoT Edge) depend on, with raw HTTPS and MQTT clients.
func TestDeviceWire(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServer(t), "device-wire.test.js")
}

// checkInfoCommand: "dpsd info --data-dir DIR -o json" prints what serve
// wrote to DIR/info.json.
func checkInfoCommand(t *testing.T, srv *dpsdServer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.Binary(t), "info", "--data-dir", srv.DataDir, "-o", "json").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("dpsd info: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("dpsd info: %v", err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("dpsd info -o json is not JSON: %v\n%s", err, out)
	}
	data, err := os.ReadFile(srv.InfoPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("dpsd info -o json: %s = %v, info.json has %v", k, got[k], v)
		}
	}
}
