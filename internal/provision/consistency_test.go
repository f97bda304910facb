package provision_test

// Consistency of registration records and hub identities (issue: "a
// registration and its hub identity always agree"), tested with the real
// registrar, a real built-in hub and real stores; faults are injected in
// front of the hub's registry and the store.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/postgres"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

const scope = "0ne00C0FFEE"

// Loopback addresses of the built-in hubs these tests start (127.0.8.0/24
// is this file's).
var hubAddrs = []string{"127.0.8.1", "127.0.8.2", "127.0.8.3", "127.0.8.4", "127.0.8.5", "127.0.8.6", "127.0.8.7", "127.0.8.8"}

var nextHubAddr atomic.Int32

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// faults injects failures in front of a hub's registry. Each field, when
// set, is consulted on every call of that method.
type faults struct {
	mu sync.Mutex
	// create, replaceTwin: return this error instead of calling the hub.
	create, replaceTwin error
	// blockTwin makes ReplaceTwin wait until its context ends.
	blockTwin bool
	// afterCreate is closed (once) after a CreateDevice succeeded.
	afterCreate chan struct{}
	creates     int
}

func (f *faults) set(change func(f *faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

type faultyRegistry struct {
	azurehub.Registry
	f *faults
}

func (r faultyRegistry) CreateDevice(ctx context.Context, d *azurehub.Device) (*azurehub.Device, error) {
	r.f.mu.Lock()
	err := r.f.create
	r.f.creates++
	r.f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out, err := r.Registry.CreateDevice(ctx, d)
	r.f.mu.Lock()
	if err == nil && r.f.afterCreate != nil {
		close(r.f.afterCreate)
		r.f.afterCreate = nil
	}
	r.f.mu.Unlock()
	return out, err
}

func (r faultyRegistry) ReplaceTwin(ctx context.Context, id string, t *azurehub.Twin, etag string) (*azurehub.Twin, error) {
	r.f.mu.Lock()
	err, block := r.f.replaceTwin, r.f.blockTwin
	r.f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	return r.Registry.ReplaceTwin(ctx, id, t, etag)
}

func (r faultyRegistry) ListDevices(ctx context.Context, after string, limit int) ([]*azurehub.Device, bool, error) {
	return r.Registry.(azurehub.DeviceLister).ListDevices(ctx, after, limit)
}

// faultyLocal serves the built-in hubs through faultyRegistry.
type faultyLocal struct {
	m *builtinhub.Manager
	f *faults
}

func (l faultyLocal) Registry(host string) (azurehub.Registry, bool) {
	r, ok := l.m.Registry(host)
	if !ok {
		return nil, false
	}
	return faultyRegistry{Registry: r, f: l.f}, true
}

// faultyStore fails the write that commits a registration's outcome, when
// failCommit is set, after the write itself went through or not at all.
type faultyStore struct {
	store.Store
	failCommit atomic.Int32 // commits left to fail
}

func (s *faultyStore) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	if rec.Kind == store.KindRegistration && !containsWork(rec.Data) && s.failCommit.Load() > 0 {
		s.failCommit.Add(-1)
		return store.Record{}, fmt.Errorf("injected: %w", store.ErrUnavailable)
	}
	return s.Store.Put(ctx, rec, cond)
}

func containsWork(data []byte) bool {
	return bytes.Contains(data, []byte(`"work":`))
}

// world is one dpsd's worth of engine, store and built-in hub.
type world struct {
	t      testing.TB
	st     store.Store
	m      *builtinhub.Manager
	f      *faults
	hubs   []string // host names
	engine *provision.Engine
	node   string
}

func newWorld(t testing.TB, st store.Store, nhubs int) *world {
	t.Helper()
	dir := t.TempDir()
	if st == nil {
		s, err := sqlite.Open(context.Background(), filepath.Join(dir, "dpsd.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		st = s
	}
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := builtinhub.NewManager(st, builtinhub.Options{Logger: quietLogger(), Certificate: ca.ServerCertificate, HTTPSPort: "0", MQTTPort: "0", AMQPPort: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	w := &world{t: t, st: st, m: m, f: &faults{}, node: "node-a"}
	for i := range nhubs {
		addr := hubAddrs[int(nextHubAddr.Add(1))%len(hubAddrs)]
		in, err := m.Create(context.Background(), fmt.Sprintf("consistency-%d-%d", i, time.Now().UnixNano()%1e6), builtinhub.CreateOptions{Address: addr})
		if err != nil {
			t.Fatal(err)
		}
		w.hubs = append(w.hubs, in.HostName)
	}
	w.engine = w.newEngine(w.node, 0)
	return w
}

// newEngine starts an engine (a node) on the world's store and hubs.
func (w *world) newEngine(node string, lease time.Duration) *provision.Engine {
	reg := hub.NewRegistrar(hub.RegistrarOptions{Local: faultyLocal{w.m, w.f}, Logger: quietLogger()})
	e := provision.New(w.st, provision.Options{
		IDScope: scope, Registrar: reg, Logger: quietLogger(), Node: node,
		HubTimeout: 2 * time.Second, Lease: lease, SyncWait: 3 * time.Second,
	})
	w.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	return e
}

func (w *world) symmetricGroup(id string, twin *dps.InitialTwin) string {
	w.t.Helper()
	g, err := enroll.PutGroup(context.Background(), w.st, id, &dps.EnrollmentGroup{
		EnrollmentGroupID: id,
		Attestation:       &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:  dps.AllocationStatic,
		IoTHubs:           []string{w.hubs[0]},
		InitialTwin:       twin,
	}, "")
	if err != nil {
		w.t.Fatal(err)
	}
	w.engine.InvalidateEnrollments()
	return g.Attestation.SymmetricKey.PrimaryKey
}

func (w *world) x509Group(id string, ca *x509.Certificate) {
	w.t.Helper()
	_, err := enroll.PutGroup(context.Background(), w.st, id, &dps.EnrollmentGroup{
		EnrollmentGroupID: id,
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationX509, X509: &dps.X509Attestation{
			SigningCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: enroll.CertificatePEM(ca)}}}},
		AllocationPolicy: dps.AllocationStatic,
		IoTHubs:          []string{w.hubs[0]},
	}, "")
	if err != nil {
		w.t.Fatal(err)
	}
	w.engine.InvalidateEnrollments()
}

func sasRequest(t testing.TB, regID, groupKey string) provision.Request {
	t.Helper()
	key, err := sas.DeriveDeviceKey(groupKey, regID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.New(scope+"/registrations/"+regID, "registration", key, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return provision.Request{IDScope: scope, RegistrationID: regID, SASToken: tok, Transport: "test"}
}

func certRequest(regID string, leaf *certs.Issued) provision.Request {
	chain := append([]*x509.Certificate{leaf.Cert}, leaf.Issuers...)
	return provision.Request{IDScope: scope, RegistrationID: regID, PeerCertificates: chain, Transport: "test"}
}

// identity is what the hub holds for deviceID, nil when nothing.
func (w *world) identity(deviceID string) *azurehub.Device {
	w.t.Helper()
	r, _ := w.m.Registry(w.hubs[0])
	d, err := r.GetDevice(context.Background(), deviceID)
	if errors.Is(err, azurehub.ErrNotFound) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return d
}

// healthy fails the test unless a check finds no problem at all.
func (w *world) healthy(e *provision.Engine) {
	w.t.Helper()
	rep, err := e.Check(context.Background(), provision.CheckOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	if rep.Total() != 0 {
		w.t.Fatalf("doctor found %d problems: %+v", rep.Total(), rep.Problems)
	}
}

func errCode(err error) int {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return 0
}

// must(t).assigned(engine.Register(...)) fails t unless the answer is
// "assigned".
func must(t testing.TB) assertion { return assertion{t} }

type assertion struct{ t testing.TB }

func (a assertion) assigned(res provision.Result, err error) {
	t := a.t
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if st := res.Operation.RegistrationState; st == nil || st.Status != dps.StatusAssigned {
		t.Fatalf("want assigned, got %+v", res.Operation)
	}
}

// TestTakeoverIsRefused: with no individual enrollment, a device bound to
// one group cannot be re-registered through another, whatever the two
// groups' attestation kinds.
func TestTakeoverIsRefused(t *testing.T) {
	w := newWorld(t, nil, 1)
	root, err := certs.NewRoot("victim-ca", certs.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	attackerRoot, err := certs.NewRoot("attacker-ca", certs.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	victimKey := w.symmetricGroup("victims-sas", nil)
	attackerKey := w.symmetricGroup("attackers-sas", nil)
	w.x509Group("victims-x509", root.Cert)
	w.x509Group("attackers-x509", attackerRoot.Cert)

	proof := func(kind, regID string, victim bool) provision.Request {
		if kind == "sas" {
			if victim {
				return sasRequest(t, regID, victimKey)
			}
			return sasRequest(t, regID, attackerKey)
		}
		ca := root
		if !victim {
			ca = attackerRoot
		}
		leaf, err := ca.Device(regID, certs.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return certRequest(regID, leaf)
	}
	for _, victim := range []string{"sas", "x509"} {
		for _, attacker := range []string{"sas", "x509"} {
			t.Run(victim+"->"+attacker, func(t *testing.T) {
				ctx := context.Background()
				regID := "dev-" + victim + "-" + attacker
				real := proof(victim, regID, true)
				must(t).assigned(w.engine.Register(ctx, real))
				before := w.identity(regID)
				rec, _ := enroll.GetRegistration(ctx, w.st, regID)

				_, err := w.engine.Register(ctx, proof(attacker, regID, false))
				if c := errCode(err); c != dps.CodeUnauthorized && c != dps.CodeUnauthorizedDevice {
					t.Fatalf("takeover: want 401, got %v", err)
				}
				if _, err := w.engine.Status(ctx, proof(attacker, regID, false)); err == nil {
					t.Fatal("status lookup through another group was answered")
				}
				after := w.identity(regID)
				if after == nil || after.ETag != before.ETag || !sameAuth(after, before) {
					t.Fatalf("hub identity changed: before %+v after %+v", before.Authentication, after)
				}
				now, _ := enroll.GetRegistration(ctx, w.st, regID)
				if now.ETag() != rec.ETag() || now.EnrollmentGroupID != rec.EnrollmentGroupID {
					t.Fatalf("record changed: group %q -> %q", rec.EnrollmentGroupID, now.EnrollmentGroupID)
				}
				// The real device still registers, and keeps its identity.
				must(t).assigned(w.engine.Register(ctx, real))
				if !sameAuth(w.identity(regID), before) {
					t.Fatal("the real device's credentials changed")
				}
			})
		}
	}
	if n := w.engine.BindingRefusals(); n < 4 {
		t.Errorf("binding refusals counted: %d, want at least 4", n)
	}
	// Deleting the registration record releases the binding.
	ctx := context.Background()
	if err := enroll.DeleteRegistration(ctx, w.st, "dev-sas-sas", ""); err != nil {
		t.Fatal(err)
	}
	must(t).assigned(w.engine.Register(ctx, sasRequest(t, "dev-sas-sas", attackerKey)))
	w.healthy(w.engine)
}

func sameAuth(a, b *azurehub.Device) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := hub.IdentityOfDevice("", a), hub.IdentityOfDevice("", b)
	return provision.SameCredentials(x, y)
}

// TestFaults: whatever step fails, the records and the hub agree
// afterwards, a failed registration leaves no identity behind, and a
// device told "assigned" has its credentials in the hub.
func TestFaults(t *testing.T) {
	tests := []struct {
		name string
		// inject sets the fault before the first registration; heal lifts
		// it before the retry.
		inject func(w *world, fs *faultyStore)
		// wantFirst is the first registration's outcome: a status, or
		// "error" for an error answer.
		wantFirst string
	}{
		{name: "hub refuses the identity", wantFirst: dps.StatusFailed,
			inject: func(w *world, _ *faultyStore) {
				w.f.set(func(f *faults) { f.create = azurehub.Errorf(403, "IotHubQuotaExceeded", "quota") })
			}},
		{name: "hub refuses the twin", wantFirst: dps.StatusFailed,
			inject: func(w *world, _ *faultyStore) {
				w.f.set(func(f *faults) { f.replaceTwin = azurehub.Errorf(400, "ArgumentInvalid", "no") })
			}},
		{name: "hub times out", wantFirst: dps.StatusFailed,
			inject: func(w *world, _ *faultyStore) { w.f.set(func(f *faults) { f.blockTwin = true }) }},
		{name: "store fails after the hub write", wantFirst: "error",
			inject: func(_ *world, fs *faultyStore) { fs.failCommit.Store(8) }},
	}
	twin := &dps.InitialTwin{Tags: []byte(`{"fleet":"a"}`)}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			base, err := sqlite.Open(ctx, filepath.Join(dir, "dpsd.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { base.Close() })
			fs := &faultyStore{Store: base}
			w := newWorld(t, fs, 1)
			key := w.symmetricGroup("fleet", twin)
			req := sasRequest(t, "dev-1", key)

			tc.inject(w, fs)
			res, err := w.engine.Register(ctx, req)
			switch tc.wantFirst {
			case "error":
				if err == nil {
					t.Fatalf("want an error answer, got %+v", res.Operation)
				}
			default:
				if err != nil || res.Operation.Status != tc.wantFirst {
					t.Fatalf("want %s, got %+v %v", tc.wantFirst, res.Operation, err)
				}
				if tc.wantFirst == dps.StatusFailed && w.identity("dev-1") != nil {
					t.Fatal("a failed registration left an identity in the hub")
				}
			}
			fs.failCommit.Store(0)
			w.f.set(func(f *faults) { f.create, f.replaceTwin, f.blockTwin = nil, nil, false })
			if tc.wantFirst != "error" {
				w.healthy(w.engine)
			}

			// The device retries: it is assigned, with its own key.
			must(t).assigned(w.engine.Register(ctx, req))
			d := w.identity("dev-1")
			want, _ := sas.DeriveDeviceKey(key, "dev-1")
			if d == nil || d.Authentication.SymmetricKey.PrimaryKey != want {
				t.Fatalf("hub identity %+v, want the device's key", d)
			}
			w.healthy(w.engine)
		})
	}
}

// TestFailedReRegistrationKeepsThePriorIdentity: a re-registration with new
// credentials that the hub half refuses leaves the identity the record
// names as it was.
func TestFailedReRegistrationKeepsThePriorIdentity(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, nil, 1)
	key := w.symmetricGroup("fleet", nil)
	must(t).assigned(w.engine.Register(ctx, sasRequest(t, "dev-1", key)))
	before := w.identity("dev-1")

	// The group is re-keyed and asks for a factory reset on re-registration,
	// and the hub refuses the reset twin.
	g, err := enroll.GetGroup(ctx, w.st, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	g.Attestation.SymmetricKey.PrimaryKey = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="
	g.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: false}
	if _, err := enroll.PutGroup(ctx, w.st, "fleet", g, "*"); err != nil {
		t.Fatal(err)
	}
	w.engine.InvalidateEnrollments()
	w.f.set(func(f *faults) { f.replaceTwin = azurehub.Errorf(400, "ArgumentInvalid", "no") })
	res, err := w.engine.Register(ctx, sasRequest(t, "dev-1", g.Attestation.SymmetricKey.PrimaryKey))
	if err != nil || res.Operation.Status != dps.StatusFailed {
		t.Fatalf("want failed, got %+v %v", res.Operation, err)
	}
	if after := w.identity("dev-1"); !sameAuth(after, before) {
		t.Fatalf("the prior identity's credentials changed: %+v", after.Authentication)
	}
	w.healthy(w.engine)
}

// TestRefusedTwinIsCheckedFirst: an initial twin the hub would refuse fails
// the registration before any identity is made, and the service API's
// rule refuses it on save.
func TestRefusedTwinIsCheckedFirst(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, nil, 1)
	deep := `{"a":` + repeat(`{"a":`, 11) + `1` + repeat(`}`, 12)
	twin := &dps.InitialTwin{Tags: []byte(deep)}
	if err := enroll.ValidateInitialTwin(twin); errCode(err) != dps.CodeInvalidArgument {
		t.Fatalf("ValidateInitialTwin: %v", err)
	}
	// Written past the service API, as an older dpsd may have stored it.
	key := w.symmetricGroup("fleet", nil)
	g, _ := enroll.GetGroup(ctx, w.st, "fleet")
	g.InitialTwin = twin
	if _, err := w.st.Put(ctx, store.Record{Kind: store.KindEnrollmentGroup, ID: "fleet", Data: mustJSON(t, g)}, store.Condition{IfMatch: "*"}); err != nil {
		t.Fatal(err)
	}
	w.engine.InvalidateEnrollments()
	res, err := w.engine.Register(ctx, sasRequest(t, "dev-1", key))
	if err != nil || res.Operation.Status != dps.StatusFailed || res.Operation.RegistrationState.ErrorCode != dps.CodeInvalidArgument {
		t.Fatalf("want failed/400004, got %+v %v", res.Operation, err)
	}
	w.f.mu.Lock()
	creates := w.f.creates
	w.f.mu.Unlock()
	if creates != 0 {
		t.Fatalf("the hub was asked to create %d identities", creates)
	}
	w.healthy(w.engine)
}

// crashedMidway leaves what a node that died between the hub's identity
// step and its twin step leaves: the identity in the hub, and the intent
// record (owned by node, with a lease until leaseUntil) naming the hub
// write and the record to commit.
func (w *world) crashedMidway(regID, groupID, node string, leaseUntil time.Time, twin *dps.InitialTwin) (opID string) {
	w.t.Helper()
	ctx := context.Background()
	g, err := enroll.GetGroup(ctx, w.st, groupID)
	if err != nil {
		w.t.Fatal(err)
	}
	p, _ := sas.DeriveDeviceKey(g.Attestation.SymmetricKey.PrimaryKey, regID)
	s, _ := sas.DeriveDeviceKey(g.Attestation.SymmetricKey.SecondaryKey, regID)
	dev := &provision.HubDevice{Hub: w.hubs[0], DeviceID: regID, PrimaryKey: p, SecondaryKey: s, InitialTwin: twin}
	reg, _ := w.m.Registry(w.hubs[0])
	if _, err := reg.CreateDevice(ctx, &azurehub.Device{DeviceID: regID, Status: azurehub.StatusEnabled, Capabilities: &azurehub.Capabilities{},
		Authentication: &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: p, SecondaryKey: s}}}); err != nil {
		w.t.Fatal(err)
	}
	opID = "4.0000000000000000.crashed-" + regID
	final := &enroll.Registration{
		State: dps.DeviceRegistrationState{RegistrationID: regID, Status: dps.StatusAssigned, Substatus: dps.SubstatusInitialAssignment,
			AssignedHub: w.hubs[0], DeviceID: regID, SymmetricKey: &dps.SymmetricKeyRegistrationResult{EnrollmentGroupID: groupID}},
		OperationID: opID, EnrollmentGroupID: groupID, AttestationType: dps.AttestationSymmetricKey,
		Identity: provision.IdentityOf(dev),
	}
	intent := *final
	intent.State.Status, intent.State.Substatus = dps.StatusAssigning, ""
	intent.Work = &enroll.Work{Owner: node + "/boot-1", LeaseUntil: leaseUntil, Target: mustJSON(w.t, dev), Final: final}
	if _, err := enroll.PutRegistration(ctx, w.st, &intent, store.Condition{MustNotExist: true}); err != nil {
		w.t.Fatal(err)
	}
	return opID
}

// TestCrashBetweenSteps: a node died after creating the identity and before
// writing the twin and the record. The same node restarted finishes the
// work at once on the device's next request; another node does so once the
// lease ends, also for a device that only polls; and a repairing check does
// so without any device.
func TestCrashBetweenSteps(t *testing.T) {
	twin := &dps.InitialTwin{Tags: []byte(`{"fleet":"a"}`)}
	tests := []struct {
		name  string
		lease time.Duration // of the dead node's work, from now
		run   func(t *testing.T, w *world, req provision.Request, opID string)
	}{
		{"same node restarted", time.Hour, func(t *testing.T, w *world, req provision.Request, _ string) {
			must(t).assigned(w.newEngine("node-dies", 0).Register(context.Background(), req))
		}},
		{"another node, device registers", 300 * time.Millisecond, func(t *testing.T, w *world, req provision.Request, _ string) {
			e := w.newEngine("node-b", 0)
			res, err := e.Register(context.Background(), req)
			if err != nil || res.Operation.Status != dps.StatusAssigning {
				t.Fatalf("within the lease: want assigning, got %+v %v", res.Operation, err)
			}
			time.Sleep(400 * time.Millisecond)
			must(t).assigned(e.Register(context.Background(), req))
		}},
		{"another node, device polls", 300 * time.Millisecond, func(t *testing.T, w *world, req provision.Request, opID string) {
			e := w.newEngine("node-b", 0)
			time.Sleep(400 * time.Millisecond)
			must(t).assigned(e.OperationStatus(context.Background(), req, opID))
		}},
		{"repairing check", -time.Second, func(t *testing.T, w *world, req provision.Request, _ string) {
			rep, err := w.engine.Check(context.Background(), provision.CheckOptions{Repair: true})
			if err != nil || rep.Counts[provision.ProblemInterrupted] != 1 || rep.Repaired != 1 {
				t.Fatalf("check: %+v %v", rep, err)
			}
			rec, _ := enroll.GetRegistration(context.Background(), w.st, req.RegistrationID)
			if rec.Work != nil || rec.State.Status != dps.StatusAssigned {
				t.Fatalf("record after repair: %+v", rec.State)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, nil, 1)
			key := w.symmetricGroup("fleet", twin)
			req := sasRequest(t, "dev-1", key)
			opID := w.crashedMidway("dev-1", "fleet", "node-dies", time.Now().Add(tc.lease), twin)
			rep, err := w.engine.Check(context.Background(), provision.CheckOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.lease < 0 && rep.Counts[provision.ProblemInterrupted] != 1 {
				t.Fatalf("check before recovery: %+v", rep.Counts)
			}
			tc.run(t, w, req, opID)
			want, _ := sas.DeriveDeviceKey(key, "dev-1")
			if d := w.identity("dev-1"); d == nil || d.Authentication.SymmetricKey.PrimaryKey != want {
				t.Fatalf("hub identity %+v", d)
			}
			r, _ := w.m.Registry(w.hubs[0])
			if tw, err := r.GetTwin(context.Background(), "dev-1"); err != nil || tw.Tags["fleet"] != "a" {
				t.Fatalf("the interrupted twin write was not finished: %+v %v", tw, err)
			}
			w.healthy(w.engine)
		})
	}
}

// TestTwoGroupsRace: two nodes register one id at the same time, each
// through another group. Whoever wins, the record names one group and the
// hub holds that group's derived key; the other is refused.
func TestTwoGroupsRace(t *testing.T) {
	rounds := 150
	if testing.Short() {
		rounds = 30
	}
	stores := map[string]func(t *testing.T) (store.Store, store.Store){
		"sqlite": func(t *testing.T) (store.Store, store.Store) {
			s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "dpsd.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, s
		},
		"postgres": func(t *testing.T) (store.Store, store.Store) {
			dsn := pgtest.Schema(t)
			a, err := postgres.Open(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			b, err := postgres.Open(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return a, b
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			stA, stB := open(t)
			w := newWorld(t, stA, 1)
			keyA := w.symmetricGroup("group-a", nil)
			keyB := w.symmetricGroup("group-b", nil)
			nodeB := &world{t: t, st: stB, m: w.m, f: w.f}
			engB := nodeB.newEngine("node-b", 0)
			wins := map[string]int{}
			for i := range rounds {
				regID := fmt.Sprintf("race-%d", i)
				var wg sync.WaitGroup
				var resA, resB provision.Result
				var errA, errB error
				wg.Add(2)
				go func() { defer wg.Done(); resA, errA = w.engine.Register(ctx, sasRequest(t, regID, keyA)) }()
				go func() { defer wg.Done(); resB, errB = engB.Register(ctx, sasRequest(t, regID, keyB)) }()
				wg.Wait()
				rec, err := enroll.GetRegistration(ctx, w.st, regID)
				if err != nil {
					t.Fatalf("round %d: %v (A: %v, B: %v)", i, err, errA, errB)
				}
				winnerKey := keyA
				if rec.EnrollmentGroupID == "group-b" {
					winnerKey = keyB
				}
				wins[rec.EnrollmentGroupID]++
				if rec.State.Status != dps.StatusAssigned {
					t.Fatalf("round %d: record %s", i, rec.State.Status)
				}
				want, _ := sas.DeriveDeviceKey(winnerKey, regID)
				if d := w.identity(regID); d == nil || d.Authentication.SymmetricKey.PrimaryKey != want {
					t.Fatalf("round %d: record names %s but the hub holds %+v", i, rec.EnrollmentGroupID, d)
				}
				// The loser was refused; the winner was told assigned with
				// the record's operation.
				for _, r := range []struct {
					group string
					res   provision.Result
					err   error
				}{{"group-a", resA, errA}, {"group-b", resB, errB}} {
					if r.group == rec.EnrollmentGroupID {
						if r.err != nil || r.res.Operation.OperationID != rec.OperationID {
							t.Fatalf("round %d: winner %s answered %+v %v", i, r.group, r.res.Operation, r.err)
						}
					} else if c := errCode(r.err); c != dps.CodeUnauthorized {
						t.Fatalf("round %d: loser %s answered %+v %v", i, r.group, r.res.Operation, r.err)
					}
				}
			}
			t.Logf("%d rounds, wins %v", rounds, wins)
			w.healthy(w.engine)
		})
	}
}

func repeat(s string, n int) string { return strings.Repeat(s, n) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUnblockingAGroupMember: a disabled individual enrollment with a group
// member's derived keys blocks it, and deleting the enrollment lets it back
// in through its group, whether it had been assigned before or not. The
// binding to the group does not stand in the way: nothing was written to a
// hub while it was blocked.
func TestUnblockingAGroupMember(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, nil, 1)
	key := w.symmetricGroup("fleet", nil)
	for _, assignedBefore := range []bool{false, true} {
		regID := fmt.Sprintf("member-%v", assignedBefore)
		req := sasRequest(t, regID, key)
		if assignedBefore {
			must(t).assigned(w.engine.Register(ctx, req))
		}
		g, _ := enroll.GetGroup(ctx, w.st, "fleet")
		p, _ := sas.DeriveDeviceKey(g.Attestation.SymmetricKey.PrimaryKey, regID)
		s, _ := sas.DeriveDeviceKey(g.Attestation.SymmetricKey.SecondaryKey, regID)
		if _, err := enroll.PutEnrollment(ctx, w.st, regID, &dps.IndividualEnrollment{
			RegistrationID:     regID,
			Attestation:        &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: p, SecondaryKey: s}},
			IoTHubHostName:     w.hubs[0],
			ProvisioningStatus: dps.ProvisioningDisabled,
		}, ""); err != nil {
			t.Fatal(err)
		}
		res, err := w.engine.Register(ctx, req)
		if err != nil || res.Operation.Status != dps.StatusDisabled {
			t.Fatalf("assigned before %v: blocked member: %+v %v", assignedBefore, res.Operation, err)
		}
		if err := enroll.DeleteEnrollment(ctx, w.st, regID, ""); err != nil {
			t.Fatal(err)
		}
		must(t).assigned(w.engine.Register(ctx, req))
	}
	w.healthy(w.engine)
}
