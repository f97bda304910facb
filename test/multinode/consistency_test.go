package multinode

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

var (
	killRounds  = flag.Int("multinode.kill.rounds", 5, "TestKillLoopKeepsRecordsAndHubInAgreement: rounds (bounded to 1..50)")
	killDevices = flag.Int("multinode.kill.devices", 400, "TestKillLoopKeepsRecordsAndHubInAgreement: devices per round (bounded to 30..20000)")
	raceRounds  = flag.Int("multinode.race.rounds", 200, "TestTwoGroupsRaceOverTransports: rounds, alternating HTTPS and MQTT (bounded to 2..5000)")
)

// restart starts n again in its data directory, as an operator restarting
// a crashed node would, and returns the new process.
func (c *cluster) restart(t *testing.T, n *node) *node {
	t.Helper()
	if err := os.Remove(filepath.Join(n.DataDir, "info.json")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	nn, err := c.startNode(t, n.index, "info", n.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	nn.StopOnCleanup(t, logTailOnError)
	if nn.svc, err = service.New(nn.info.ServiceConnectionString, service.WithCAPool(c.certs.Pool)); err != nil {
		t.Fatal(err)
	}
	if nn.devHTTP, err = device.NewHTTPClient(device.Config{ProvisioningHost: nn.info.HTTPSAddr, RootCAs: c.certs.Pool}); err != nil {
		t.Fatal(err)
	}
	return nn
}

// doctor runs dpsd's consistency check on n.
func doctor(t *testing.T, n *node, repair bool) *admin.CheckReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var rep admin.CheckReport
	method, body := http.MethodGet, any(nil)
	if repair {
		method, body = http.MethodPost, map[string]bool{"repair": true}
	}
	if err := n.svc.Do(ctx, method, "/dpsd/doctor", nil, body, &rep, ""); err != nil {
		t.Fatalf("%s: doctor: %v", n.name, err)
	}
	return &rep
}

// nodeSet is the cluster's nodes as devices see them while nodes restart.
type nodeSet struct {
	mu    sync.Mutex
	nodes []*node
}

func (s *nodeSet) get(i int) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[i%len(s.nodes)]
}

func (s *nodeSet) set(i int, n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[i] = n
}

// TestKillLoopKeepsRecordsAndHubInAgreement kills a node with SIGKILL in
// the middle of each of several bursts and restarts it, on two PostgreSQL
// nodes and on one SQLite node. Devices retry as real ones do. Afterwards
// every device told "assigned" has its record and exactly its credentials
// in the hub, the hub holds no identity that no record names, and dpsd
// doctor finds nothing.
func TestKillLoopKeepsRecordsAndHubInAgreement(t *testing.T) {
	rounds, devices := min(max(*killRounds, 1), 50), min(max(*killDevices, 30), 20000)
	if testing.Short() {
		rounds, devices = 2, 100
	}
	for _, tc := range []struct {
		name  string
		opts  clusterOptions
		kills int // index of the node killed each round
	}{
		{"postgres, two nodes", clusterOptions{nodes: 2}, 1},
		{"sqlite, one node", clusterOptions{nodes: 1, sqlite: true}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, tc.opts)
			key := c.createGroup(t, c.nodes[0], "kill-loop")
			nodes := &nodeSet{nodes: append([]*node(nil), c.nodes...)}
			told := map[string]*dps.DeviceRegistrationState{}
			var toldMu sync.Mutex
			retried := 0
			var gaveUp atomic.Int64
			for round := range rounds {
				var done atomic.Int64
				var killOnce sync.Once
				restarted := make(chan struct{})
				kill := func() {
					killOnce.Do(func() {
						victim := nodes.get(tc.kills)
						t.Logf("round %d: SIGKILL %s after %d registrations", round, victim.name, done.Load())
						victim.kill(t)
						nodes.set(tc.kills, c.restart(t, victim))
						close(restarted)
					})
				}
				jobs := make(chan int)
				var wg sync.WaitGroup
				var retriedRound atomic.Int64
				for range 16 {
					wg.Go(func() {
						for i := range jobs {
							id := fmt.Sprintf("kl-%d-%03d", round, i)
							var st *dps.DeviceRegistrationState
							var errs []string
							// Every fourth device gives up after one attempt, as
							// a device that loses power would: what its attempt
							// left must be found and put right too.
							attempts := 40
							if i%4 == 3 {
								attempts = 1
							}
							for attempt := 0; attempt < attempts && st == nil; attempt++ {
								n := nodes.get(i + attempt)
								var err error
								st, err = device.Register(t.Context(), c.deviceConfig(n, key, id))
								if err != nil {
									errs = append(errs, err.Error())
									var de *device.Error
									if errors.As(err, &de) && !de.Temporary() {
										break
									}
									time.Sleep(time.Duration(min(attempt+1, 10)) * 50 * time.Millisecond)
								}
							}
							if len(errs) > 0 {
								retriedRound.Add(1)
							}
							if st == nil {
								if attempts > 1 {
									t.Errorf("%s never assigned: %s", id, strings.Join(errs, "; "))
								} else {
									gaveUp.Add(1)
								}
								continue
							}
							toldMu.Lock()
							told[id] = st
							toldMu.Unlock()
							if done.Add(1) == int64(devices/3) {
								go kill()
							}
						}
					})
				}
				for i := range devices {
					jobs <- i
				}
				close(jobs)
				wg.Wait()
				select {
				case <-restarted:
				case <-time.After(2 * testenv.StartTimeout):
					t.Fatal("the killed node did not come back")
				}
				retried += int(retriedRound.Load())
			}

			// Every device told "assigned" is recorded as told, and the hub
			// holds exactly its key.
			live := nodes.get(0)
			for id, st := range told {
				if st.Status != dps.StatusAssigned || st.AssignedHub != c.hub.name {
					t.Errorf("%s told %+v", id, st)
					continue
				}
				rec, err := live.svc.GetRegistration(t.Context(), id)
				if err != nil || rec.Status != dps.StatusAssigned || rec.ETag != st.ETag {
					t.Errorf("%s: record %+v %v, told etag %s", id, rec, err, st.ETag)
				}
				want, _ := sas.DeriveDeviceKey(key, id)
				if got := c.hub.primaryKey(id); got != want {
					t.Errorf("%s: hub key %q, want the device's", id, got)
				}
			}
			// Devices that gave up may have left work half done: the check
			// reports it as interrupted (never as an orphan or a mismatch),
			// and a repair finishes or undoes it.
			// The restarted node takes over its earlier runs' work at once
			// (other nodes wait for the lease to run out), so repair there.
			restarted := nodes.get(tc.kills)
			before := doctor(t, live, false)
			for kind, n := range before.Counts {
				if kind != admin.ProblemInterrupted && kind != admin.ProblemUnreachable {
					t.Errorf("doctor before repair: %d %s", n, kind)
				}
			}
			repaired := doctor(t, restarted, true)
			after := doctor(t, live, false)
			if after.Total() != 0 {
				t.Errorf("doctor after repair: %+v", after)
			}
			// No orphans: every identity in the hub belongs to a record
			// that names it with its key.
			orphans, mismatches := 0, 0
			for _, id := range c.hub.deviceIDs() {
				rec, err := live.svc.GetRegistration(t.Context(), id)
				if err != nil {
					orphans++
					t.Errorf("orphan identity %s in the hub: %v", id, err)
					continue
				}
				want, _ := sas.DeriveDeviceKey(key, rec.RegistrationID)
				if rec.Status != dps.StatusAssigned || c.hub.primaryKey(id) != want {
					mismatches++
					t.Errorf("%s: record %s, hub key matches: %v", id, rec.Status, c.hub.primaryKey(id) == want)
				}
			}
			t.Logf("%d rounds of %d devices: %d told assigned (%d after a failed attempt), %d gave up after one attempt; hub identities %d, orphans %d, mismatches %d; doctor before repair %v, repaired %d, after %d problems in %d registrations",
				rounds, devices, len(told), retried, gaveUp.Load(), len(c.hub.deviceIDs()), orphans, mismatches, before.Counts, repaired.Repaired, after.Total(), after.Registrations)
		})
	}
}

// slowWebhook is a custom allocation webhook that answers after delay
// (changeable) with the hub it is given.
type slowWebhook struct {
	hubName string
	delay   atomic.Int64 // nanoseconds
	calls   atomic.Int64
	url     string
}

func startSlowWebhook(t *testing.T, hubName string) *slowWebhook {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(hubIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	w := &slowWebhook{hubName: hubName, url: "http://" + l.Addr().String() + "/allocate"}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.calls.Add(1)
		select {
		case <-time.After(time.Duration(w.delay.Load())):
		case <-r.Context().Done():
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		json.NewEncoder(rw).Encode(map[string]any{"iotHubHostName": w.hubName})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return w
}

// TestKillDuringSlowWebhook: a node dies while a custom allocation waits
// for a slow webhook. The device's retry gets a fresh answer within
// seconds: from the same node restarted at once, from another node once
// the dead node's lease ends (10 s).
func TestKillDuringSlowWebhook(t *testing.T) {
	for _, who := range []string{"same node restarted", "another node"} {
		t.Run(who, func(t *testing.T) {
			c := startCluster(t, clusterOptions{nodes: 2})
			hook := startSlowWebhook(t, c.hub.name)
			hook.delay.Store(int64(time.Hour))
			ctx := t.Context()
			g := &dps.EnrollmentGroup{
				EnrollmentGroupID:          "slow-webhook",
				Attestation:                &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
				AllocationPolicy:           dps.AllocationCustom,
				IoTHubs:                    []string{c.hub.name},
				CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: hook.url, APIVersion: "2019-03-31"},
			}
			created, err := c.nodes[0].svc.CreateEnrollmentGroup(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			key := created.Attestation.SymmetricKey.PrimaryKey
			victim := c.nodes[1]
			var first dps.RegistrationOperationStatus
			if code := c.deviceRequest(t, victim, key, "slow-1", http.MethodPut, "/register", &first); code != http.StatusAccepted || first.Status != dps.StatusAssigning {
				t.Fatalf("register: %d %+v", code, first)
			}
			victim.kill(t)
			hook.delay.Store(0)

			start := time.Now()
			next := c.nodes[0]
			if who == "same node restarted" {
				next = c.restart(t, victim)
			}
			cfg := c.deviceConfig(next, key, "slow-1")
			cfg.MaxPollWait, cfg.MaxPolls = time.Second, 60
			st, err := device.Register(ctx, cfg)
			took := time.Since(start)
			if err != nil || st.Status != dps.StatusAssigned || st.AssignedHub != c.hub.name {
				t.Fatalf("retry: %+v %v", st, err)
			}
			limit := 20 * time.Second
			if who == "another node" {
				limit = 30 * time.Second // the lease (10 s) and polls; far from the 15 minutes before
			}
			if took > limit {
				t.Errorf("the retry took %v, want within %v", took, limit)
			}
			t.Logf("%s: the device's retry was assigned %v after the node died (webhook calls: %d)", who, took.Round(10*time.Millisecond), hook.calls.Load())
			if rep := doctor(t, next, false); rep.Total() != 0 {
				t.Errorf("doctor: %+v", rep)
			}
		})
	}
}

// primaryKey is the SAS primary key of the hub's identity id, "" if none.
func (h *fakeHub) primaryKey(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var d struct {
		Authentication struct {
			SymmetricKey struct {
				PrimaryKey string `json:"primaryKey"`
			} `json:"symmetricKey"`
		} `json:"authentication"`
	}
	if err := json.Unmarshal(h.devices[strings.ToLower(id)], &d); err != nil {
		return ""
	}
	return d.Authentication.SymmetricKey.PrimaryKey
}

// deviceIDs are the ids of the hub's identities, lower-cased.
func (h *fakeHub) deviceIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.devices))
	for id := range h.devices {
		ids = append(ids, id)
	}
	return ids
}

// TestTwoGroupsRaceOverTransports: one registration id, two groups, two
// devices registering at once, over HTTPS and MQTT, on two PostgreSQL
// nodes and on one SQLite node. After every round the record names one
// group, the hub holds that group's derived key, and the other device was
// refused.
func TestTwoGroupsRaceOverTransports(t *testing.T) {
	rounds := min(max(*raceRounds, 2), 5000)
	if testing.Short() {
		rounds = 20
	}
	for _, tc := range []struct {
		name string
		opts clusterOptions
	}{
		{"postgres, two nodes", clusterOptions{nodes: 2}},
		{"sqlite, one node", clusterOptions{nodes: 1, sqlite: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, tc.opts)
			keys := map[string]string{
				"race-a": c.createGroup(t, c.nodes[0], "race-a"),
				"race-b": c.createGroup(t, c.nodes[0], "race-b"),
			}
			wins := map[string]int{}
			for round := range rounds {
				transport := device.TransportHTTPS
				if round%2 == 1 {
					transport = device.TransportMQTT
				}
				id := fmt.Sprintf("race-%s-%03d", transport, round)
				var wg sync.WaitGroup
				errs := map[string]error{}
				var mu sync.Mutex
				for i, g := range []string{"race-a", "race-b"} {
					wg.Go(func() {
						n := c.nodes[i%len(c.nodes)]
						cfg := c.deviceConfig(n, keys[g], id)
						cfg.Transport = transport
						if transport == device.TransportMQTT {
							cfg.ProvisioningHost, cfg.HTTPClient = n.info.MQTTAddr, nil
						}
						_, err := device.Register(t.Context(), cfg)
						mu.Lock()
						errs[g] = err
						mu.Unlock()
					})
				}
				wg.Wait()
				rec, err := c.nodes[0].svc.GetRegistration(t.Context(), id)
				if err != nil {
					t.Fatalf("round %d: %v (devices: %v)", round, err, errs)
				}
				group := ""
				if rec.SymmetricKey != nil {
					group = rec.SymmetricKey.EnrollmentGroupID
				}
				wins[group]++
				key, ok := keys[group]
				if rec.Status != dps.StatusAssigned || !ok {
					t.Fatalf("round %d: record %+v", round, rec)
				}
				want, _ := sas.DeriveDeviceKey(key, id)
				if got := c.hub.primaryKey(id); got != want {
					t.Fatalf("round %d: record names %s, the hub holds another key", round, group)
				}
				for g, err := range errs {
					var de *device.Error
					switch {
					case g == group && err != nil:
						t.Fatalf("round %d: winner %s: %v", round, g, err)
					case g != group && (!errors.As(err, &de) || de.Code()/1000 != 401):
						t.Fatalf("round %d: loser %s: %v, want 401", round, g, err)
					}
				}
			}
			t.Logf("%d rounds over HTTPS and MQTT: wins %v", rounds, wins)
			if rep := doctor(t, c.nodes[0], false); rep.Total() != 0 {
				t.Errorf("doctor: %+v", rep)
			}
		})
	}
}
