package multinode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
	"github.com/dpsd/dpsd/internal/testenv"
)

// Bounds for everything the harness waits on.
const (
	requestTimeout = 30 * time.Second
	logTailOnError = 60
	// Nodes listen on 127.0.0.50, .51, ... (see nodeNet) and the fake hub
	// on the last address of the ten.
	firstHost = 50
	maxNodes  = 10
)

var (
	certOnce sync.Once
	certs    *testenv.TLSFiles
	certErr  error
)

func TestMain(m *testing.M) { testenv.Main(m, "multinode") }

// testCerts is one server certificate that every node presents, from a CA
// of the test's own: each node would otherwise make a local CA of its own
// in its data directory, and a client would need to trust each.
func testCerts(t *testing.T) *testenv.TLSFiles {
	t.Helper()
	certOnce.Do(func() {
		ips := make([]net.IP, maxNodes)
		for i := range ips {
			ips[i] = nodeIP(i)
		}
		certs, certErr = testenv.ServerCertificate(testenv.Path("tls"), ips...)
	})
	if certErr != nil {
		t.Fatalf("make test certificates: %v", certErr)
	}
	return certs
}

// nodeNet is the /24 the nodes listen in: 127.0.0 unless
// DPSD_TEST_MULTINODE_NET names another loopback one (e.g. "127.0.24"),
// for running these tests beside others that use 127.0.0.50-59.
var nodeNet = func() [3]byte {
	n := [3]byte{127, 0, 0}
	if v := os.Getenv("DPSD_TEST_MULTINODE_NET"); v != "" {
		if ip := net.ParseIP(v + ".0").To4(); ip != nil && ip.IsLoopback() {
			copy(n[:], ip[:3])
		}
	}
	return n
}()

func nodeIP(i int) net.IP { return net.IPv4(nodeNet[0], nodeNet[1], nodeNet[2], byte(firstHost+i)) }

// node is one running "dpsd serve" of a cluster, with clients of it.
type node struct {
	*testenv.Node
	index  int        // in the cluster
	name   string     // Node.Name
	info   admin.Info // Node.Info
	killed atomic.Bool

	svc     *service.Client
	devHTTP *http.Client // shared by the devices that register here
}

// cluster is a set of nodes sharing one store.
type cluster struct {
	store string // --store
	dsn   string // the PostgreSQL DSN, empty for sqlite
	certs *testenv.TLSFiles
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
	c.nodes = make([]*node, o.nodes)
	errs := make([]error, o.nodes)
	var wg sync.WaitGroup
	for i := range o.nodes {
		wg.Go(func() { c.nodes[i], errs[i] = c.startNode(t, i, o.logLevel, "") })
	}
	wg.Wait()
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		n.StopOnCleanup(t, logTailOnError)
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
		if n.svc, err = service.New(n.info.ServiceConnectionString, service.WithCAPool(c.certs.Pool)); err != nil {
			t.Fatalf("%s: service client: %v", n.name, err)
		}
		if n.devHTTP, err = device.NewHTTPClient(device.Config{ProvisioningHost: n.info.HTTPSAddr, RootCAs: c.certs.Pool}); err != nil {
			t.Fatalf("%s: device HTTP client: %v", n.name, err)
		}
	}
	c.hub = startFakeHub(t, c.certs)
	t.Cleanup(func() { c.hub.check(t) })
	c.linkHub(t, c.nodes[0], c.hub)
	return c
}

// startNode starts node i; in dataDir, when not empty (a restart), else in
// a new one.
func (c *cluster) startNode(t *testing.T, i int, logLevel, dataDir string) (*node, error) {
	ip := nodeIP(i).String()
	n, err := testenv.StartNode(t, testenv.NodeOptions{
		IP:      ip,
		Name:    fmt.Sprintf("node %d (%s)", i, ip),
		DataDir: dataDir,
		Args: []string{
			"--store", c.store,
			"--hostname", ip,
			// Port 0: the kernel picks a free port, so test runs and other
			// test packages on this machine never collide; info.json says
			// which ports the node got.
			"--https-addr", net.JoinHostPort(ip, "0"),
			"--mqtt-addr", net.JoinHostPort(ip, "0"),
			"--amqp-addr", net.JoinHostPort(ip, "0"),
			"--tls-cert", c.certs.CertFile,
			"--tls-key", c.certs.KeyFile,
			"--log-level", logLevel,
		},
		// The nodes reach the test's hub over HTTPS with its certificate
		// from the test CA; Go's certificate pool on Unix reads
		// SSL_CERT_FILE.
		Env: []string{"SSL_CERT_FILE=" + c.certs.CAFile},
	})
	if err != nil {
		return nil, err
	}
	return &node{Node: n, index: i, name: n.Name, info: n.Info}, nil
}

// kill ends the node at once with SIGKILL, as a crash or an OOM kill would.
func (n *node) kill(t *testing.T) {
	n.killed.Store(true)
	n.Kill(t)
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
		RootCAs:          c.certs.Pool,
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
	code, data := c.deviceRequestBody(t, n, groupKey, id, method, path)
	if code/100 == 2 && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s on %s: answer %s: %v", method, path, n.name, data, err)
		}
	} else if code/100 != 2 {
		t.Logf("%s %s on %s: %d %s", method, path, n.name, code, data)
	}
	return code
}

// deviceRequestBody is deviceRequest returning the answer's body
// undecoded, whatever its status.
func (c *cluster) deviceRequestBody(t *testing.T, n *node, groupKey, id, method, path string) (int, []byte) {
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
	return resp.StatusCode, data
}
