package provision

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
)

// The two hubs a device can be allocated to in the reprovisioning tests.
const (
	hubA = "hub-a.example"
	hubB = "hub-b.example"
)

// pickingAllocator answers with the hub the test chose for the current
// step, and records what the engine asked. For custom allocation it plays a
// webhook that honours the contract: it may only answer with one of the
// hubs it is offered, which under "never reprovision" is the current hub
// alone (the real allocator computes that offer: allocate.Candidates; its
// tests cover it). It returns an initial twin and a payload only for custom
// allocation, as a webhook would.
type pickingAllocator struct {
	mu     sync.Mutex
	pick   string
	inputs []AllocationInput
	// offered is what a webhook would have seen as linkedHubs, per call.
	offered [][]string
}

func (a *pickingAllocator) Allocate(_ context.Context, in *AllocationInput) (*Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inputs = append(a.inputs, *in)
	policy, _, _, _, rp := in.Policy()
	offer := []string{hubA, hubB}
	if in.Previous != nil && !rp.UpdateHubAssignment {
		offer = []string{in.Previous.AssignedHub}
	}
	a.offered = append(a.offered, offer)
	hub := a.pick
	if !slices.Contains(offer, hub) {
		hub = offer[0]
	}
	if policy != dps.AllocationCustom {
		return &Allocation{Hub: hub}, nil
	}
	return &Allocation{
		Hub:         hub,
		InitialTwin: twinFrom("webhook"),
		Payload:     json.RawMessage(`{"answeredBy":"webhook"}`),
	}, nil
}

func (a *pickingAllocator) setPick(hub string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pick = hub
}

func (a *pickingAllocator) calls() ([]AllocationInput, [][]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.inputs), slices.Clone(a.offered)
}

// twinFrom is an initial twin whose tag "source" says where it came from.
func twinFrom(source string) *dps.InitialTwin {
	return &dps.InitialTwin{
		Tags:       json.RawMessage(fmt.Sprintf(`{"source":%q}`, source)),
		Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(fmt.Sprintf(`{"configuredBy":%q}`, source))},
	}
}

// twinSource reads the "source" tag of an initial twin; "" for none.
func twinSource(t *testing.T, tw *dps.InitialTwin) string {
	t.Helper()
	if tw == nil || len(tw.Tags) == 0 {
		return ""
	}
	var tags struct {
		Source string `json:"source"`
	}
	if err := json.Unmarshal(tw.Tags, &tags); err != nil {
		t.Fatalf("initial twin tags %s: %v", tw.Tags, err)
	}
	return tags.Source
}

// TestReprovisioning runs every combination of the reprovision policy
// (updateHubAssignment × migrateDeviceData), where allocation sends the
// device (its current hub | another hub) and whether it is the device's
// first registration, for a local policy (hashed) and for custom
// allocation. It checks the substatus, the hub assigned and exactly what
// the registrar is asked to do (service-api.md §5.6 and §6.3).
func TestReprovisioning(t *testing.T) {
	type want struct {
		substatus string
		hub       string
		// What the registrar receives.
		previousHub string
		migrate     bool
		reset       bool
		twin        string // "enrollment" or "webhook": whose initial twin
		// allocatorAsked is whether the allocator is consulted on the
		// registration under test.
		allocatorAsked bool
	}
	type tc struct {
		policy          string
		update, migrate bool
		newHub          bool // allocation picks hub B rather than the current hub A
		reregister      bool
		want            want
	}

	// expect derives the expected outcome from the rules, written out case
	// by case so each row of the reprovisioning table is visible.
	expect := func(c tc) want {
		custom := c.policy == dps.AllocationCustom
		initialTwin := "enrollment"
		if custom {
			initialTwin = "webhook"
		}
		if !c.reregister {
			// First registration: whatever the policy, the device lands
			// where allocation puts it with its initial twin (the
			// webhook's replaces the enrollment's).
			hub := hubA
			if c.newHub {
				hub = hubB
			}
			return want{substatus: dps.SubstatusInitialAssignment, hub: hub, twin: initialTwin, allocatorAsked: true}
		}
		switch {
		case !c.update:
			// Never reprovision: the device stays on hub A whatever
			// allocation would say; migrateDeviceData is ignored. A
			// local policy is not even asked; a custom webhook still is
			// (its payload goes back to the device), offered hub A only.
			return want{substatus: dps.SubstatusReprovisionedToInitialAssignment, hub: hubA, twin: "enrollment", allocatorAsked: custom}
		case c.newHub && c.migrate:
			// Moved with its data: the registrar copies the device from
			// A; a webhook's initial twin is ignored.
			return want{substatus: dps.SubstatusDeviceDataMigrated, hub: hubB, previousHub: hubA, migrate: true, twin: "enrollment", allocatorAsked: true}
		case c.newHub:
			// Moved and reset: created afresh on B from the initial twin,
			// the webhook's when it sent one (service-api.md §5.6).
			return want{substatus: dps.SubstatusDeviceDataReset, hub: hubB, previousHub: hubA, reset: true, twin: initialTwin, allocatorAsked: true}
		case !c.migrate:
			// Same hub under "reset to initial config": a factory reset
			// from the enrollment's twin (the webhook's counts only on a
			// move). See the report on this row: Azure's substatus for a
			// same-hub reset is not documented unambiguously.
			return want{substatus: dps.SubstatusDeviceDataReset, hub: hubA, reset: true, twin: "enrollment", allocatorAsked: true}
		default:
			// Same hub, data kept.
			return want{substatus: dps.SubstatusReprovisionedToInitialAssignment, hub: hubA, twin: "enrollment", allocatorAsked: true}
		}
	}

	var cases []tc
	for _, policy := range []string{dps.AllocationHashed, dps.AllocationCustom} {
		for _, update := range []bool{true, false} {
			for _, migrate := range []bool{true, false} {
				for _, newHub := range []bool{false, true} {
					for _, rereg := range []bool{false, true} {
						c := tc{policy: policy, update: update, migrate: migrate, newHub: newHub, reregister: rereg}
						c.want = expect(c)
						cases = append(cases, c)
					}
				}
			}
		}
	}

	for _, c := range cases {
		name := fmt.Sprintf("%s/update=%t/migrate=%t/newHub=%t/reregister=%t", c.policy, c.update, c.migrate, c.newHub, c.reregister)
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			alloc := &pickingAllocator{}
			f := newFixture(t, Options{Allocator: alloc})
			e := &dps.IndividualEnrollment{
				RegistrationID:    "dev",
				Attestation:       &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
				AllocationPolicy:  c.policy,
				IoTHubs:           []string{hubA, hubB},
				InitialTwin:       twinFrom("enrollment"),
				ReprovisionPolicy: &dps.ReprovisionPolicy{UpdateHubAssignment: c.update, MigrateDeviceData: c.migrate},
			}
			if c.policy == dps.AllocationCustom {
				e.CustomAllocationDefinition = &dps.CustomAllocationDefinition{WebhookURL: "https://alloc.example/api?code=k", APIVersion: "2021-10-01"}
			}
			stored, err := enroll.PutEnrollment(ctx, f.st, "dev", e, "")
			if err != nil {
				t.Fatal(err)
			}
			req := f.request("dev", stored.Attestation.SymmetricKey.PrimaryKey)

			pick := hubA
			if c.newHub {
				pick = hubB
			}
			if c.reregister {
				// The first registration puts the device on hub A.
				alloc.setPick(hubA)
				first := register(t, f, req)
				if first.AssignedHub != hubA || first.Substatus != dps.SubstatusInitialAssignment {
					t.Fatalf("first registration = %+v, want %s with %s", first, hubA, dps.SubstatusInitialAssignment)
				}
			}
			callsBefore, _ := alloc.calls()
			regBefore := f.reg.count()
			alloc.setPick(pick)

			st := register(t, f, req)
			w := c.want
			if st.Status != dps.StatusAssigned || st.Substatus != w.substatus || st.AssignedHub != w.hub || st.DeviceID != "dev" {
				t.Errorf("state = status %s substatus %s hub %s device %s; want assigned %s %s dev",
					st.Status, st.Substatus, st.AssignedHub, st.DeviceID, w.substatus, w.hub)
			}
			if c.policy == dps.AllocationCustom && string(st.Payload) != `{"answeredBy":"webhook"}` {
				t.Errorf("payload = %s; a webhook's payload always goes back to the device", st.Payload)
			}

			// The allocator: asked or not, and with what.
			calls, offered := alloc.calls()
			asked := len(calls) > len(callsBefore)
			if asked != w.allocatorAsked {
				t.Errorf("allocator asked = %t, want %t", asked, w.allocatorAsked)
			}
			if asked && c.reregister {
				in := calls[len(calls)-1]
				if in.Previous == nil || in.Previous.AssignedHub != hubA {
					t.Errorf("allocation input Previous = %+v, want the current assignment to %s", in.Previous, hubA)
				}
				if !c.update && !slices.Equal(offered[len(offered)-1], []string{hubA}) {
					t.Errorf("never reprovision: the webhook was offered %v, want only the current hub", offered[len(offered)-1])
				}
			}

			// The registrar: exactly one call for this registration.
			if n := f.reg.count() - regBefore; n != 1 {
				t.Fatalf("registrar called %d times, want 1", n)
			}
			f.reg.mu.Lock()
			dev := f.reg.calls[len(f.reg.calls)-1]
			f.reg.mu.Unlock()
			if dev.Hub != w.hub || dev.DeviceID != "dev" || dev.PrimaryKey == "" {
				t.Errorf("hub device = hub %s id %s key %q; want %s dev with the device key", dev.Hub, dev.DeviceID, dev.PrimaryKey, w.hub)
			}
			if dev.PreviousHub != w.previousHub || dev.MigrateDeviceData != w.migrate || dev.ResetTwin != w.reset {
				t.Errorf("hub device PreviousHub %q MigrateDeviceData %t ResetTwin %t; want %q %t %t",
					dev.PreviousHub, dev.MigrateDeviceData, dev.ResetTwin, w.previousHub, w.migrate, w.reset)
			}
			if got := twinSource(t, dev.InitialTwin); got != w.twin {
				t.Errorf("initial twin from %q, want from %q", got, w.twin)
			}

			// The record the service API shows agrees.
			rec, err := enroll.GetRegistration(ctx, f.st, "dev")
			if err != nil {
				t.Fatal(err)
			}
			if rec.State.Substatus != w.substatus || rec.State.AssignedHub != w.hub {
				t.Errorf("stored state = %s on %s, want %s on %s", rec.State.Substatus, rec.State.AssignedHub, w.substatus, w.hub)
			}
		})
	}
}

// register runs one registration to its end (custom allocation finishes in
// the background: wait for it) and returns the final registration state.
func register(t *testing.T, f *fixture, req Request) *dps.DeviceRegistrationState {
	t.Helper()
	ctx := context.Background()
	res, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Operation.Status == dps.StatusAssigning {
		if err := f.eng.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if res, err = f.eng.OperationStatus(ctx, req, res.Operation.OperationID); err != nil {
			t.Fatal(err)
		}
	}
	if res.Operation.RegistrationState == nil {
		t.Fatalf("operation %+v has no registration state", res.Operation)
	}
	return res.Operation.RegistrationState
}
