package dpsd_test

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"
)

// TestDockerfile checks the Dockerfile without a container builder (the
// test machines have none): its shape (multi-stage, empty base, non-root
// user, data volume), and its build step, run here as the builder would,
// makes a static binary that reports the version it was given. The release
// script must stamp the same way.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var froms, users, volumes, builds []string
	var entrypoint string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		word, rest, _ := strings.Cut(line, " ")
		switch word {
		case "FROM":
			froms = append(froms, rest)
		case "USER":
			users = append(users, rest)
		case "VOLUME":
			volumes = append(volumes, rest)
		case "ENTRYPOINT":
			entrypoint = rest
		case "RUN":
			if strings.Contains(rest, "go build") {
				builds = append(builds, rest)
			}
		}
	}
	if len(froms) != 2 || !strings.HasSuffix(froms[0], " AS build") || froms[1] != "scratch" {
		t.Errorf("stages %q: want a build stage and a scratch image", froms)
	}
	if len(users) != 1 || strings.HasPrefix(users[0], "0") || strings.HasPrefix(users[0], "root") {
		t.Errorf("USER %q: want one non-root user", users)
	}
	if len(volumes) != 1 || !strings.Contains(volumes[0], `"/data"`) || !strings.Contains(string(data), "ENV DPSD_DATA_DIR=/data") {
		t.Errorf("VOLUME %q: want /data, the data directory", volumes)
	}
	if entrypoint != `["/dpsd"]` {
		t.Errorf("ENTRYPOINT %s", entrypoint)
	}
	if len(builds) != 1 || !strings.HasPrefix(builds[0], "CGO_ENABLED=0 ") {
		t.Fatalf("build steps %q: want one static go build", builds)
	}

	// The release script stamps the same variables.
	script, err := os.ReadFile(filepath.Join("scripts", "release.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range regexp.MustCompile(`-X (\S+)=`).FindAllStringSubmatch(builds[0], -1) {
		if !strings.Contains(string(script), "-X "+v[1]+"=") {
			t.Errorf("scripts/release.sh does not set %s", v[1])
		}
	}

	if runtime.GOOS != "linux" {
		t.Skip("the image's binary is a Linux one")
	}
	// Run the build step as the builder would, with the build arguments.
	out := filepath.Join(t.TempDir(), "dpsd")
	step := strings.NewReplacer("${VERSION}", "v9.8.7-test", "${COMMIT}", "0123abcd", "/out/dpsd", out).Replace(builds[0])
	cmd := exec.Command("sh", "-c", step)
	cmd.Env = append(os.Environ(), "GOOS=linux")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", step, err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the image's binary is dynamically linked: a scratch image has no loader")
		}
	}
	v, err := exec.Command(out, "--version").Output()
	if err != nil || string(v) != "dpsd v9.8.7-test (commit 0123abcd)\n" {
		t.Errorf("dpsd --version = %q, %v", v, err)
	}
}

// TestCompose checks compose.yaml without a container engine: PostgreSQL,
// two dpsd nodes on it with the same host name and certificate and their
// own data volumes, and a TCP load balancer sending every dpsd port to
// both.
func TestCompose(t *testing.T) {
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build       any               `yaml:"build"`
			Image       string            `yaml:"image"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Ports       []string          `yaml:"ports"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	nodes := []string{"dpsd-1", "dpsd-2"}
	for _, n := range nodes {
		s, ok := c.Services[n]
		if !ok {
			t.Fatalf("no service %s", n)
		}
		env := s.Environment
		if !strings.HasPrefix(env["DPSD_STORE"], "postgres://") || env["DPSD_TLS_CERT"] == "" || env["DPSD_HOSTNAME"] == "" || s.Build == nil {
			t.Errorf("%s: environment %v, build %v", n, env, s.Build)
		}
		if !slices.Contains(s.Volumes, n+"-data:/data") {
			t.Errorf("%s: volumes %v, want its own data volume", n, s.Volumes)
		}
	}
	if c.Services["dpsd-1"].Environment["DPSD_HOSTNAME"] != c.Services["dpsd-2"].Environment["DPSD_HOSTNAME"] {
		t.Error("the nodes have different host names")
	}
	if _, ok := c.Services["postgres"]; !ok {
		t.Error("no postgres service")
	}
	cfg, err := os.ReadFile(filepath.Join("deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"443", "8883", "5671"} {
		if !slices.Contains(c.Services["lb"].Ports, port+":"+port) {
			t.Errorf("the load balancer does not publish %s", port)
		}
		for _, n := range nodes {
			if !strings.Contains(string(cfg), n+":"+port+" check") {
				t.Errorf("haproxy.cfg does not send %s to %s", port, n)
			}
		}
	}
	if !strings.Contains(string(cfg), "mode tcp") {
		t.Error("haproxy.cfg does not balance TCP")
	}
}
