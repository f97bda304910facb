package multinode

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

// groupCacheTTL mirrors provision's groupListTTL: how long a node verifies
// devices against the enrollment groups it read, unless told of a change.
const groupCacheTTL = 200 * time.Millisecond

// TestGroupDisabledOnOtherNodeAtOnce disables an enrollment group through
// one node's service API and registers new members on another node from
// the moment the update returns: the other node must refuse them long
// before its cached copy of the group expires.
//
// B first verifies a member against the enabled group, which caches the
// group list for groupCacheTTL from then on. Without being told of the
// change (PostgreSQL's NOTIFY, see store.Notifier) B would accept every
// member until that copy expired, so a refusal within groupCacheTTL of the
// first member proves that B was told. The notification trails the commit
// by a few milliseconds (more on a busy machine), so the first member
// registered straight after the update may still be accepted; the test
// then tries again every few milliseconds with a new member. A round
// proves the point when the refusal came back within groupCacheTTL of the
// first member's request (B cached the list after that request started
// and consulted it before the refusal came back); one in which the machine
// was too slow for that proves nothing either way, and the test fails when
// no round proves it.
func TestGroupDisabledOnOtherNodeAtOnce(t *testing.T) {
	const (
		rounds = 5
		group  = "toggled-group"
		retry  = 2 * time.Millisecond
	)
	c := startCluster(t, clusterOptions{nodes: 2})
	a, b := c.nodes[0], c.nodes[1]
	key := c.createGroup(t, a, group)
	ctx := t.Context()

	// register registers a new member on b and returns its status.
	register := func(id string) string {
		t.Helper()
		var op dps.RegistrationOperationStatus
		if code := c.deviceRequest(t, b, key, id, http.MethodPut, "/register", &op); code/100 != 2 {
			t.Fatalf("register %s on %s: HTTP %d", id, b.name, code)
		}
		return op.Status
	}

	proved := 0
	var refused []string
	for round := range rounds {
		g, err := a.svc.GetEnrollmentGroup(ctx, group)
		if err != nil {
			t.Fatalf("%s: get group: %v", a.name, err)
		}
		if g.ProvisioningStatus != dps.ProvisioningEnabled {
			t.Fatalf("round %d: group is %q, want enabled", round, g.ProvisioningStatus)
		}

		// B verifies a member against the enabled group, and so caches it.
		// After the previous round re-enabled the group, B may not have
		// heard of that yet either.
		var warmed time.Time
		for try := 0; ; try++ {
			warmed = time.Now()
			status := register(fmt.Sprintf("toggled-%02d-first-%02d", round, try))
			if status == dps.StatusAssigned {
				break
			}
			if try == 50 {
				t.Fatalf("round %d: %s still answers %q a while after %s enabled the group", round, b.name, status, a.name)
			}
			time.Sleep(retry)
		}

		g.ProvisioningStatus = dps.ProvisioningDisabled
		if g, err = a.svc.UpdateEnrollmentGroup(ctx, g); err != nil {
			t.Fatalf("round %d: %s: disable group: %v", round, a.name, err)
		}
		disabled := time.Now()

		// From the moment the update returns until B refuses a member.
		var tries int
		var refusedBy time.Time
		for tries = 1; ; tries++ {
			id := fmt.Sprintf("toggled-%02d-second-%02d", round, tries)
			status := register(id)
			if status == dps.StatusDisabled {
				refused, refusedBy = append(refused, id), time.Now()
				break
			}
			if status != dps.StatusAssigned {
				t.Fatalf("round %d: register %s on %s: status %q, want %q (or %q before it hears of the change)", round, id, b.name, status, dps.StatusDisabled, dps.StatusAssigned)
			}
			if since := time.Since(disabled); since > 5*time.Second {
				// Not even the cache's expiry helped.
				t.Fatalf("round %d: %s still accepts members of the group %v after %s disabled it", round, b.name, since.Round(time.Millisecond), a.name)
			}
			time.Sleep(retry)
		}
		// B read the group list after warmed and looked at it before
		// refusedBy, so within groupCacheTTL its copy was still fresh and
		// only the notification can have made it read the list again.
		age := refusedBy.Sub(warmed)
		if age < groupCacheTTL {
			proved++
		}
		t.Logf("round %d: refused by %v after the update returned (attempt %d), %v after B cached the group",
			round, refusedBy.Sub(disabled).Round(100*time.Microsecond), tries, age.Round(time.Millisecond))

		g.ProvisioningStatus = dps.ProvisioningEnabled
		if _, err := a.svc.UpdateEnrollmentGroup(ctx, g); err != nil {
			t.Fatalf("round %d: %s: enable group: %v", round, a.name, err)
		}
	}
	if proved == 0 {
		t.Fatalf("no round was refused within %v of B caching the group: B was not told of the change (or, if the updates alone took about that long, the machine is too slow for this test)", groupCacheTTL)
	}
	t.Logf("%d of %d rounds refused while B's cached copy was still fresh", proved, rounds)

	// The refused devices never reached the hub.
	created := c.hub.creations()
	for _, id := range refused {
		if created[id] != 0 {
			t.Errorf("%s: refused, yet created %d times in the hub", id, created[id])
		}
	}
}
