package multinode

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
)

// recordsTable is the PostgreSQL store's table (store/postgres); the
// tests read it directly to count records, which no API shows.
const recordsTable = "dpsd_records"

func TestRegisterOnOneNodePollOnAnother(t *testing.T) {
	c := startCluster(t, clusterOptions{nodes: 2})
	a, b := c.nodes[0], c.nodes[1]
	key := c.createGroup(t, a, "cross-group")
	ctx := t.Context()

	// An enrollment written through A is what B serves.
	ga, err := a.svc.GetEnrollmentGroup(ctx, "cross-group")
	if err != nil {
		t.Fatal(err)
	}
	gb, err := b.svc.GetEnrollmentGroup(ctx, "Cross-Group")
	if err != nil {
		t.Fatalf("%s: group created on %s: %v", b.name, a.name, err)
	}
	if ga.ETag != gb.ETag {
		t.Errorf("group etag on %s %q, on %s %q", a.name, ga.ETag, b.name, gb.ETag)
	}

	// Register on A, poll the operation on B.
	const id = "cross-device-01"
	var op dps.RegistrationOperationStatus
	if code := c.deviceRequest(t, a, key, id, http.MethodPut, "/register", &op); code/100 != 2 {
		t.Fatalf("register on %s: HTTP %d", a.name, code)
	}
	if op.OperationID == "" {
		t.Fatalf("register on %s answered no operation id: %+v", a.name, op)
	}
	var polled dps.RegistrationOperationStatus
	for range 50 { // bounded; static allocation is synchronous, so one poll is expected
		if code := c.deviceRequest(t, b, key, id, http.MethodGet, "/operations/"+op.OperationID, &polled); code/100 != 2 {
			t.Fatalf("poll on %s of the operation started on %s: HTTP %d", b.name, a.name, code)
		}
		if dps.Terminal(polled.Status) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if polled.Status != dps.StatusAssigned || polled.RegistrationState == nil {
		t.Fatalf("poll on %s: %+v, want assigned with a registration state", b.name, polled)
	}
	st := polled.RegistrationState
	if st.AssignedHub != c.hub.name || st.DeviceID != id || polled.OperationID != op.OperationID {
		t.Errorf("poll on %s: hub %q device %q operation %q; want %q, %q, %q", b.name, st.AssignedHub, st.DeviceID, polled.OperationID, c.hub.name, id, op.OperationID)
	}
	if op.RegistrationState != nil && op.RegistrationState.ETag != "" && op.RegistrationState.ETag != st.ETag {
		t.Errorf("register on %s answered etag %q, poll on %s %q", a.name, op.RegistrationState.ETag, b.name, st.ETag)
	}

	// The status lookup and the service API on B agree.
	var lookup dps.DeviceRegistrationState
	if code := c.deviceRequest(t, b, key, id, http.MethodPost, "", &lookup); code != http.StatusOK {
		t.Fatalf("status lookup on %s: HTTP %d", b.name, code)
	}
	if lookup.ETag != st.ETag || lookup.Status != dps.StatusAssigned {
		t.Errorf("status lookup on %s = %+v, want the polled state %+v", b.name, lookup, st)
	}
	reg, err := b.svc.GetRegistration(ctx, id)
	if err != nil {
		t.Fatalf("%s: get registration: %v", b.name, err)
	}
	if reg.Status != dps.StatusAssigned || reg.AssignedHub != c.hub.name {
		t.Errorf("%s: registration %+v, want assigned to %s", b.name, reg, c.hub.name)
	}

	// A device registered through the client on B is listed on A.
	if _, err := device.Register(ctx, c.deviceConfig(b, key, "cross-device-02")); err != nil {
		t.Fatalf("register on %s: %v", b.name, err)
	}
	page, err := a.svc.QueryRegistrations(ctx, "cross-group", service.QueryOptions{})
	if err != nil {
		t.Fatalf("%s: query registrations: %v", a.name, err)
	}
	var ids []string
	for _, r := range page.Items {
		ids = append(ids, r.RegistrationID)
	}
	if strings.Join(ids, ",") != "cross-device-01,cross-device-02" {
		t.Errorf("%s lists registrations %q, want both devices", a.name, ids)
	}

	// A deletion on B is seen on A.
	if err := b.svc.DeleteRegistration(ctx, id, ""); err != nil {
		t.Fatalf("%s: delete registration: %v", b.name, err)
	}
	if _, err := a.svc.GetRegistration(ctx, id); err == nil {
		t.Errorf("%s still has the registration deleted on %s", a.name, b.name)
	}
}

func TestSameDeviceOnTwoNodesAtOnce(t *testing.T) {
	const rounds = 25
	c := startCluster(t, clusterOptions{nodes: 2})
	key := c.createGroup(t, c.nodes[0], "race-group")
	ctx := t.Context()
	conn := pgtest.Conn(t, c.dsn)

	agreed := 0
	for round := range rounds {
		id := fmt.Sprintf("race-%02d", round)
		// Both requests start together; a barrier rather than sleeps.
		start := make(chan struct{})
		var states [2]*dps.DeviceRegistrationState
		var errs [2]error
		var wg sync.WaitGroup
		for i, n := range c.nodes {
			wg.Go(func() {
				<-start
				states[i], errs[i] = device.Register(ctx, c.deviceConfig(n, key, id))
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: register on %s: %v", round, c.nodes[i].name, err)
			}
		}
		s0, s1 := states[0], states[1]
		for i, s := range states {
			if s.Status != dps.StatusAssigned || s.AssignedHub != c.hub.name || s.DeviceID != id {
				t.Errorf("round %d: %s answered %+v, want %s assigned to %s", round, c.nodes[i].name, s, id, c.hub.name)
			}
		}

		// One record, and it is what a node answered: the last of the
		// two writes when both wrote (the second then re-provisioned the
		// device), the single write when one lost the compare-and-swap
		// and answered the winner's record.
		var count int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+recordsTable+" WHERE kind = 'registration' AND id_key = $1", strings.ToLower(id)).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if count != 1 {
			t.Errorf("round %d: %d registration records for %s, want 1", round, count, id)
		}
		stored, err := c.nodes[round%2].svc.GetRegistration(ctx, id)
		if err != nil {
			t.Fatalf("round %d: get registration: %v", round, err)
		}
		switch {
		case s0.ETag == s1.ETag:
			agreed++
			if stored.ETag != s0.ETag {
				t.Errorf("round %d: both nodes answered etag %q but the record has %q", round, s0.ETag, stored.ETag)
			}
		default:
			later := s0
			if s1.LastUpdatedDateTimeUTC != nil && s0.LastUpdatedDateTimeUTC != nil && s1.LastUpdatedDateTimeUTC.After(*s0.LastUpdatedDateTimeUTC) {
				later = s1
			}
			if stored.ETag != later.ETag {
				t.Errorf("round %d: nodes answered etags %q and %q; the record has %q, want the later write's", round, s0.ETag, s1.ETag, stored.ETag)
			}
		}
		if stored.Status != dps.StatusAssigned || stored.AssignedHub != c.hub.name {
			t.Errorf("round %d: stored registration %+v, want assigned to %s", round, stored, c.hub.name)
		}
	}
	t.Logf("%d of %d rounds: both nodes answered the same record (one lost the compare-and-swap); the others registered one after the other", agreed, rounds)
	// However the two registrations interleaved, the hub got one identity
	// per device: the second registration found it and left it.
	created := c.hub.creations()
	for round := range rounds {
		id := fmt.Sprintf("race-%02d", round)
		if n := created[id]; n != 1 {
			t.Errorf("%s: device identity created %d times in the hub, want 1", id, n)
		}
	}
}

func TestNodeKilledDuringBurst(t *testing.T) {
	const (
		devices     = 300
		concurrency = 16
		maxAttempts = 10
		killAfter   = devices / 3 // completed registrations before the kill
	)
	c := startCluster(t, clusterOptions{nodes: 3})
	key := c.createGroup(t, c.nodes[0], "burst-group")
	ctx := t.Context()
	victim := c.nodes[2]

	var done atomic.Int64
	var killOnce sync.Once
	killed := make(chan struct{})
	kill := func() {
		killOnce.Do(func() {
			t.Logf("SIGKILL %s after %d registrations", victim.name, done.Load())
			victim.kill(t)
			close(killed)
		})
	}

	type outcome struct {
		state    *dps.DeviceRegistrationState
		attempts int
		errs     []string
	}
	results := make([]outcome, devices)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for i := range jobs {
				id := fmt.Sprintf("burst-%03d", i)
				res := &results[i]
				// Spread devices over the nodes; after a failure try the
				// next node, as a device behind a load balancer would land
				// on another node when it retries.
				for attempt := 0; attempt < maxAttempts && res.state == nil; attempt++ {
					n := c.nodes[(i+attempt)%len(c.nodes)]
					res.attempts++
					st, err := device.Register(ctx, c.deviceConfig(n, key, id))
					if err != nil {
						res.errs = append(res.errs, fmt.Sprintf("%s: %v", n.name, err))
						var de *device.Error
						if errors.As(err, &de) && !de.Temporary() {
							break // the service refused: retrying cannot help
						}
						time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
						continue
					}
					res.state = st
				}
				if res.state != nil && done.Add(1) == killAfter {
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
	if done.Load() < killAfter {
		t.Fatalf("only %d registrations succeeded, too few to kill a node during the burst", done.Load())
	}
	<-killed // kill() bounds its own wait

	retried := 0
	for i, r := range results {
		id := fmt.Sprintf("burst-%03d", i)
		if r.state == nil {
			t.Errorf("%s not assigned after %d attempts: %s", id, r.attempts, strings.Join(r.errs, "; "))
			continue
		}
		if r.attempts > 1 {
			retried++
		}
		if r.state.Status != dps.StatusAssigned || r.state.AssignedHub != c.hub.name || r.state.DeviceID != id {
			t.Errorf("%s: answered %+v, want assigned to %s", id, r.state, c.hub.name)
		}
	}
	t.Logf("%d devices assigned, %d of them after a failed attempt", devices, retried)

	// Exactly one record per device, each assigned once to the hub, and
	// each what the device was last told.
	conn := pgtest.Conn(t, c.dsn)
	var records, distinct int
	if err := conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT id_key) FROM "+recordsTable+" WHERE kind = 'registration' AND id_key LIKE 'burst-%'").Scan(&records, &distinct); err != nil {
		t.Fatal(err)
	}
	if records != devices || distinct != devices {
		t.Errorf("%d registration records (%d distinct ids), want %d", records, distinct, devices)
	}
	live := c.nodes[0]
	seen := 0
	cont := ""
	for page := 0; page < 100; page++ {
		p, err := live.svc.QueryRegistrations(ctx, "burst-group", service.QueryOptions{Continuation: cont})
		if err != nil {
			t.Fatalf("%s: query registrations: %v", live.name, err)
		}
		for _, st := range p.Items {
			seen++
			var i int
			if _, err := fmt.Sscanf(st.RegistrationID, "burst-%03d", &i); err != nil || i < 0 || i >= devices {
				t.Errorf("unexpected registration %q", st.RegistrationID)
				continue
			}
			if st.Status != dps.StatusAssigned || st.AssignedHub != c.hub.name {
				t.Errorf("%s: stored %+v, want assigned to %s", st.RegistrationID, st, c.hub.name)
			}
			if told := results[i].state; told != nil && told.ETag != st.ETag {
				t.Errorf("%s: stored etag %q, but the device was last told %q", st.RegistrationID, st.ETag, told.ETag)
			}
		}
		if cont = p.Continuation; cont == "" {
			break
		}
	}
	if seen != devices {
		t.Errorf("%s lists %d registrations of the group, want %d", live.name, seen, devices)
	}
	// Provisioned exactly once: one identity per device in the hub, also
	// for devices whose first attempt died with the node (the retry found
	// the identity, or the record, already made).
	created := c.hub.creations()
	for i := range devices {
		id := fmt.Sprintf("burst-%03d", i)
		if n := created[id]; n != 1 {
			t.Errorf("%s: device identity created %d times in the hub, want 1", id, n)
		}
	}
	if len(created) != devices {
		t.Errorf("the hub has %d device identities, want %d", len(created), devices)
	}
}
