package multinode

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/dps"
	"github.com/dpsd/dpsd/sas"
	"github.com/dpsd/dpsd/store/postgres/pgtest"
)

// Bounds for everything the harness waits on.
const (
	buildTimeout   = 8 * time.Minute
	startTimeout   = 60 * time.Second
	stopTimeout    = 15 * time.Second
	requestTimeout = 30 * time.Second
	logTailOnError = 60
	// Nodes listen on 127.0.0.50, .51, ... and the fake hub on the last
	// address of the ten.
	firstHost = 50
	maxNodes  = 10
)

var (
	tmpRoot string // removed by TestMain unless DPSD_MULTINODE_KEEP is set

	buildOnce sync.Once
	binPath   string
	buildErr  error

	certOnce sync.Once
	certs    *tlsFiles
	certErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "dpsd-multinode-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "multinode:", err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	if os.Getenv("DPSD_MULTINODE_KEEP") == "" {
		os.RemoveAll(tmpRoot)
	} else {
		fmt.Fprintln(os.Stderr, "multinode: kept", tmpRoot)
	}
	os.Exit(code)
}

// dpsdBinary builds ./cmd/dpsd once per test process.
func dpsdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := filepath.Abs(filepath.Join("..", ".."))
		if err != nil {
			buildErr = err
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		out := filepath.Join(tmpRoot, "bin", "dpsd")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./cmd/dpsd")
		cmd.Dir = root
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/dpsd: %v\n%s", err, buf.String())
			return
		}
		binPath = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// tlsFiles is one server certificate that every node presents, from a CA
// of the test's own: each node would otherwise make a local CA of its own
// in its data directory, and a client would need to trust each.
type tlsFiles struct {
	certFile, keyFile string
	caFile            string // the CA alone, for SSL_CERT_FILE
	pool              *x509.CertPool
}

func testCerts(t *testing.T) *tlsFiles {
	t.Helper()
	certOnce.Do(func() { certs, certErr = makeCerts(filepath.Join(tmpRoot, "tls")) })
	if certErr != nil {
		t.Fatalf("make test certificates: %v", certErr)
	}
	return certs
}

func makeCerts(dir string) (*tlsFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dpsd multinode test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "dpsd node"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	for i := range maxNodes {
		tmpl.IPAddresses = append(tmpl.IPAddresses, nodeIP(i))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &tlsFiles{
		certFile: filepath.Join(dir, "server.pem"),
		keyFile:  filepath.Join(dir, "server.key"),
		caFile:   filepath.Join(dir, "ca.pem"),
		pool:     x509.NewCertPool(),
	}
	f.pool.AddCert(ca)
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	if err := os.WriteFile(f.certFile, chain, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	return f, nil
}

func nodeIP(i int) net.IP { return net.IPv4(127, 0, 0, byte(firstHost+i)) }

// nodeInfo mirrors the fields of server.Info (info.json) that the tests
// use; kept separate so the tests compile whatever state that package is in.
type nodeInfo struct {
	IDScope                 string `json:"idScope"`
	ServiceConnectionString string `json:"serviceConnectionString"`
	HTTPSAddr               string `json:"httpsAddr"`
	MQTTAddr                string `json:"mqttAddr"`
}

// node is one running "dpsd serve".
type node struct {
	name    string
	ip      string
	dataDir string
	logPath string
	info    nodeInfo

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	killed  atomic.Bool

	svc     *service.Client
	devHTTP *http.Client // shared by the devices that register here
}

// cluster is a set of nodes sharing one store.
type cluster struct {
	store string // --store
	dsn   string // the PostgreSQL DSN, empty for sqlite
	certs *tlsFiles
	nodes []*node
	scope string
	hub   *fakeHub // linked; every test enrollment allocates to it
}

// options of a cluster.
type clusterOptions struct {
	nodes    int
	sqlite   bool   // one node on the embedded store instead of PostgreSQL
	logLevel string // default "info"
}

// startCluster starts the nodes at the same time on a fresh schema, as an
// orchestrator starting a new deployment would, so they also race to
// migrate the schema and to create the instance identity. It stops them
// when the test ends.
func startCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	if o.nodes < 1 || o.nodes > maxNodes-1 {
		t.Fatalf("cluster of %d nodes: want 1..%d", o.nodes, maxNodes-1)
	}
	c := &cluster{store: "sqlite", certs: testCerts(t)}
	if !o.sqlite {
		c.dsn = pgtest.Schema(t)
		c.store = c.dsn
	}
	if o.logLevel == "" {
		o.logLevel = "info"
	}
	bin := dpsdBinary(t)
	c.nodes = make([]*node, o.nodes)
	errs := make([]error, o.nodes)
	var wg sync.WaitGroup
	for i := range o.nodes {
		wg.Go(func() { c.nodes[i], errs[i] = c.startNode(t, bin, i, o.logLevel) })
	}
	wg.Wait()
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		t.Cleanup(func() {
			n.stop(t)
			if t.Failed() {
				t.Logf("--- last %d lines of %s's log (%s) ---\n%s", logTailOnError, n.name, n.logPath, tail(n.logPath, logTailOnError))
			}
		})
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	// One instance: the identity lives in the shared store, so every node
	// must have found (or raced to create) the same one.
	first, err := sas.ParseConnectionString(c.nodes[0].info.ServiceConnectionString)
	if err != nil {
		t.Fatalf("%s: service connection string: %v", c.nodes[0].name, err)
	}
	c.scope = c.nodes[0].info.IDScope
	for _, n := range c.nodes {
		cs, err := sas.ParseConnectionString(n.info.ServiceConnectionString)
		if err != nil {
			t.Fatalf("%s: service connection string: %v", n.name, err)
		}
		if n.info.IDScope != c.scope || cs.SharedAccessKey != first.SharedAccessKey {
			t.Fatalf("%s has ID scope %s and another owner key than %s (scope %s): the nodes do not share one instance",
				n.name, n.info.IDScope, c.nodes[0].name, c.scope)
		}
		// Each node's connection string names the node itself, which is
		// what its service API checks tokens against.
		if n.svc, err = service.New(n.info.ServiceConnectionString, service.WithCAPool(c.certs.pool)); err != nil {
			t.Fatalf("%s: service client: %v", n.name, err)
		}
		if n.devHTTP, err = device.NewHTTPClient(device.Config{ProvisioningHost: n.info.HTTPSAddr, RootCAs: c.certs.pool}); err != nil {
			t.Fatalf("%s: device HTTP client: %v", n.name, err)
		}
	}
	c.hub = startFakeHub(t, c.certs)
	t.Cleanup(func() { c.hub.check(t) })
	c.linkHub(t, c.nodes[0], c.hub)
	return c
}

func (c *cluster) startNode(t *testing.T, bin string, i int, logLevel string) (*node, error) {
	ip := nodeIP(i).String()
	dataDir, err := os.MkdirTemp(tmpRoot, "node-"+ip+"-")
	if err != nil {
		return nil, err
	}
	n := &node{
		name:    fmt.Sprintf("node %d (%s)", i, ip),
		ip:      ip,
		dataDir: dataDir,
		logPath: dataDir + ".log",
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(n.logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"serve",
		"--store", c.store,
		"--data-dir", dataDir,
		"--hostname", ip,
		// Port 0: the kernel picks a free port, so test runs and other
		// test packages on this machine never collide; info.json says
		// which ports the node got.
		"--https-addr", net.JoinHostPort(ip, "0"),
		"--mqtt-addr", net.JoinHostPort(ip, "0"),
		"--amqp-addr", net.JoinHostPort(ip, "0"),
		"--tls-cert", c.certs.certFile,
		"--tls-key", c.certs.keyFile,
		"--log-level", logLevel,
	}
	n.cmd = exec.Command(bin, args...)
	// The nodes reach the test's hub over HTTPS with its certificate from
	// the test CA; Go's certificate pool on Unix reads SSL_CERT_FILE.
	n.cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+c.certs.caFile)
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	setChildAttrs(n.cmd)
	if err := n.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", n.name, err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		logFile.Close()
		close(n.exited)
	}()
	if err := n.waitReady(); err != nil {
		n.stop(t)
		return nil, fmt.Errorf("%s: %v\n--- log (%s) ---\n%s", n.name, err, n.logPath, tail(n.logPath, logTailOnError))
	}
	t.Logf("%s serving: https %s, mqtt %s, pid %d", n.name, n.info.HTTPSAddr, n.info.MQTTAddr, n.cmd.Process.Pid)
	return n, nil
}

// waitReady polls (bounded) until the node wrote its info.json, which it
// does once its store is open and its listeners are bound, and accepts
// connections.
func (n *node) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("dpsd serve exited before it was ready: %v", n.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		data, err := os.ReadFile(filepath.Join(n.dataDir, "info.json"))
		if err != nil {
			last = err
			continue
		}
		var info nodeInfo
		if err := json.Unmarshal(data, &info); err != nil {
			last = err
			continue
		}
		if info.IDScope == "" || info.ServiceConnectionString == "" || info.HTTPSAddr == "" {
			last = fmt.Errorf("info.json incomplete: %s", data)
			continue
		}
		conn, err := net.DialTimeout("tcp", info.HTTPSAddr, time.Second)
		if err != nil {
			last = err
			continue
		}
		conn.Close()
		n.info = info
		return nil
	}
	return fmt.Errorf("not ready after %v: %v", startTimeout, last)
}

// stop sends SIGTERM, waits (bounded), then SIGKILL. Only this node's PID.
func (n *node) stop(t *testing.T) {
	select {
	case <-n.exited:
		return
	default:
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Logf("SIGTERM %s: %v", n.name, err)
	}
	select {
	case <-n.exited:
		return
	case <-time.After(stopTimeout):
	}
	t.Errorf("%s did not stop within %v of SIGTERM; sending SIGKILL", n.name, stopTimeout)
	n.kill(t)
}

// kill ends the node at once with SIGKILL, as a crash or an OOM kill would,
// and waits (bounded) for it to be gone.
func (n *node) kill(t *testing.T) {
	n.killed.Store(true)
	if err := n.cmd.Process.Kill(); err != nil {
		t.Logf("SIGKILL %s: %v", n.name, err)
	}
	select {
	case <-n.exited:
	case <-time.After(stopTimeout):
		t.Errorf("%s still running %v after SIGKILL", n.name, stopTimeout)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
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

// createGroup creates a symmetric-key enrollment group that assigns every
// member to the cluster's hub, through the given node's service API, and returns
// the group key members derive their keys from.
func (c *cluster) createGroup(t *testing.T, n *node, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	g := &dps.EnrollmentGroup{
		EnrollmentGroupID: id,
		Attestation: &dps.AttestationMechanism{
			Type: dps.AttestationSymmetricKey,
			SymmetricKey: &dps.SymmetricKeyAttestation{
				PrimaryKey:   sas.GenerateKey(64),
				SecondaryKey: sas.GenerateKey(64),
			},
		},
		ProvisioningStatus: dps.ProvisioningEnabled,
		AllocationPolicy:   dps.AllocationStatic,
		IoTHubs:            []string{c.hub.name},
	}
	created, err := n.svc.CreateEnrollmentGroup(ctx, g)
	if err != nil {
		t.Fatalf("%s: create enrollment group %s: %v", n.name, id, err)
	}
	if a := created.Attestation; a != nil && a.SymmetricKey != nil && a.SymmetricKey.PrimaryKey != "" {
		return a.SymmetricKey.PrimaryKey
	}
	return g.Attestation.SymmetricKey.PrimaryKey
}

// deviceConfig is the configuration of a group member registering on n.
func (c *cluster) deviceConfig(n *node, groupKey, id string) device.Config {
	return device.Config{
		ProvisioningHost: n.info.HTTPSAddr,
		IDScope:          c.scope,
		RegistrationID:   id,
		GroupKey:         groupKey,
		Transport:        device.TransportHTTPS,
		RootCAs:          c.certs.pool,
		HTTPClient:       n.devHTTP,
		Timeout:          requestTimeout,
		RequestTimeout:   requestTimeout,
		// Assignments here are synchronous; should one not be, poll soon.
		MaxPollWait: 200 * time.Millisecond,
		MaxPolls:    50,
	}
}

// deviceRequest sends one raw device API request to n, signed as the
// group member id, and decodes a JSON answer into out. It returns the HTTP
// status. It is for what client/device does not expose: the operation id
// of a register, polling it elsewhere, and the status lookup.
func (c *cluster) deviceRequest(t *testing.T, n *node, groupKey, id, method, path string, out any) int {
	t.Helper()
	key, err := sas.DeriveDeviceKey(groupKey, id)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.New(url.QueryEscape(c.scope+"/registrations/"+id), "registration", key, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var body io.Reader
	if method != http.MethodGet {
		b, _ := json.Marshal(dps.DeviceRegistration{RegistrationID: id})
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	u := "https://" + n.info.HTTPSAddr + "/" + url.PathEscape(c.scope) + "/registrations/" + url.PathEscape(id) + path + "?api-version=" + device.DefaultAPIVersion
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := n.devHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, n.name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s on %s: read answer: %v", method, path, n.name, err)
	}
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s on %s: answer %s: %v", method, path, n.name, data, err)
		}
	} else if resp.StatusCode/100 != 2 {
		t.Logf("%s %s on %s: %d %s", method, path, n.name, resp.StatusCode, data)
	}
	return resp.StatusCode
}
