package dpsd_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
)

// containerIP is the loopback address the container's dpsd listens on
// (with the host's network): this package's test range.
const containerIP = "127.0.21.20"

// TestContainerImage builds the Dockerfile's image and runs it, when a
// Docker daemon can run here: the one DOCKER_HOST names, or else a private
// one the test starts (dockerd installed, root), stopped at the end. No
// registry is reachable on the test machines, so the build stage's
// golang image cannot be pulled: the test builds the binary as that stage
// does (TestDockerfile checks the step) and builds the final stage of the
// Dockerfile, unchanged but for COPY --from=build reading the same paths
// from the build context. It then runs the image as the README says
// (non-root, /data volume), and the host's dpsd creates and lists an
// enrollment through it.
func TestContainerImage(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs a Linux Docker daemon")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker CLI")
	}
	dockerEnv := daemon(t)

	docker := func(timeout time.Duration, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "docker", args...)
		cmd.Env = append(os.Environ(), dockerEnv...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// The build context: what the build stage would leave in /out, and
	// the CA roots.
	ctxDir := t.TempDir()
	for _, d := range []string{"out/data", "etc/ssl/certs"} {
		if err := os.MkdirAll(filepath.Join(ctxDir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags",
		"-s -w -X github.com/dpsd/dpsd/internal/cli.buildVersion=v0.0.0-container -X github.com/dpsd/dpsd/internal/cli.buildCommit=feed",
		"-o", filepath.Join(ctxDir, "out", "dpsd"), "./cmd/dpsd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	roots, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skipf("no CA roots to put in the image: %v", err)
	}
	os.WriteFile(filepath.Join(ctxDir, "etc/ssl/certs/ca-certificates.crt"), roots, 0o644)
	final, err := finalStage("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(final), 0o644)

	tag := fmt.Sprintf("dpsd-test:%d", time.Now().UnixNano())
	if out, err := docker(5*time.Minute, "build", "-q", "-t", tag, ctxDir); err != nil {
		t.Fatalf("docker build: %v\n%s\nDockerfile:\n%s", err, out, final)
	}
	t.Cleanup(func() { docker(time.Minute, "rmi", "-f", tag) })

	if out, err := docker(time.Minute, "run", "--rm", tag, "--version"); err != nil || !strings.Contains(out, "dpsd v0.0.0-container (commit feed)") {
		t.Errorf("docker run --version: %v\n%s", err, out)
	}

	// Serve, with the data directory on the host so the test reads
	// info.json; the image's user owns it.
	data := t.TempDir()
	if err := os.Chown(data, 65532, 65532); err != nil {
		t.Skipf("chown the data directory for the image's user: %v", err)
	}
	os.Chmod(data, 0o700)
	name := strings.NewReplacer(":", "-").Replace(tag)
	if out, err := docker(time.Minute, "run", "-d", "--name", name, "--network", "host", "-v", data+":/data", tag,
		"serve", "--hostname", containerIP,
		"--https-addr", containerIP+":0", "--mqtt-addr", containerIP+":0", "--amqp-addr", containerIP+":0"); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := docker(time.Minute, "logs", name)
			t.Logf("container log:\n%s", out)
		}
		docker(time.Minute, "rm", "-f", name)
	})

	var info admin.Info
	deadline := time.Now().Add(time.Minute)
	for {
		b, err := os.ReadFile(filepath.Join(data, "info.json"))
		if err == nil && json.Unmarshal(b, &info) == nil && info.HTTPSAddr != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no info.json from the container after a minute")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := docker(time.Minute, "exec", name, "/dpsd", "info", "-o", "json"); err != nil || !strings.Contains(out, info.IDScope) {
		t.Errorf("dpsd info in the container: %v\n%s", err, out)
	}
	// The host's dpsd talks to the container's: create an enrollment, provision it.
	host := filepath.Join(ctxDir, "out", "dpsd")
	ca := filepath.Join(data, "tls", "ca.pem")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), host, append(args, "--connection-string", info.ServiceConnectionString, "--ca-file", ca)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("enrollment", "create", "--registration-id", "in-a-container")
	if out := run("enrollment", "list", "-o", "tsv"); !strings.Contains(out, "in-a-container") {
		t.Errorf("enrollment list:\n%s", out)
	}
	// The process in the container is not root.
	if out, err := docker(time.Minute, "inspect", "-f", "{{.Config.User}}", name); err != nil || strings.TrimSpace(out) != "65532:65532" {
		t.Errorf("container user %q, %v", out, err)
	}
}

// finalStage returns the Dockerfile's last stage with every COPY
// --from=build reading the same path from the build context instead.
func finalStage(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "FROM ") {
			lines = nil // a new stage
		}
		if f := strings.Fields(line); len(f) > 0 && f[0] == "COPY" && slices.Contains(f, "--from=build") {
			// COPY --from=build [flags] /src dst → COPY [flags] src dst
			out := []string{"COPY"}
			source := true
			for _, w := range f[1:] {
				switch {
				case w == "--from=build":
					continue
				case !strings.HasPrefix(w, "--") && source:
					w, source = strings.TrimPrefix(w, "/"), false
				}
				out = append(out, w)
			}
			line = strings.Join(out, " ")
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 {
		return "", fmt.Errorf("%s: no stage", path)
	}
	return strings.Join(lines, "\n") + "\n", nil
}

// daemon returns the environment that points the docker CLI at a running
// daemon, starting a private one if none answers; it skips the test when
// none can run.
func daemon(t *testing.T) []string {
	t.Helper()
	ping := func(env []string) bool {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}")
		cmd.Env = append(os.Environ(), env...)
		return cmd.Run() == nil
	}
	if ping(nil) {
		return nil
	}
	dockerd, err := exec.LookPath("dockerd")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("no Docker daemon answers, and none can be started here (dockerd not installed, or not root)")
	}
	dir, err := os.MkdirTemp("", "dpsd-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	env := []string{"DOCKER_HOST=unix://" + sock, "DOCKER_BUILDKIT=0"}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing of the host's network or storage setup is touched: no
	// bridge, no iptables rules, files in a temporary directory.
	cmd := exec.Command(dockerd, "--data-root", filepath.Join(dir, "root"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "--host", "unix://"+sock,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Skipf("start dockerd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		// dockerd leaves its network namespace bind-mounted in the exec root.
		syscall.Unmount(filepath.Join(dir, "exec", "netns", "default"), syscall.MNT_DETACH)
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove dockerd's directory: %v", err)
		}
	})
	for range 60 {
		if ping(env) {
			return env
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
	if len(log) > 2000 {
		log = log[len(log)-2000:]
	}
	t.Skipf("dockerd did not come up in 30 s; its log ends:\n%s", log)
	return nil
}
