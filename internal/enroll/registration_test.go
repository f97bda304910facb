package enroll

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// TestPutRegistrationReturnsWhatIsStored checks that the record
// PutRegistration returns (built without decoding what it wrote) is the
// one a later read decodes, for a record with every part filled in.
func TestPutRegistrationReturnsWhatIsStored(t *testing.T) {
	st := newStore(t)
	ctx := t.Context()
	final := &Registration{
		State:       dps.DeviceRegistrationState{RegistrationID: "Dev-1", AssignedHub: "hub.example", DeviceID: "dev-1", Status: dps.StatusAssigned, Substatus: dps.SubstatusInitialAssignment},
		OperationID: "4.0123456789abcdef.op",
		Identity:    &HubIdentity{Hub: "hub.example", DeviceID: "dev-1", PrimaryKey: "cA==", SecondaryKey: "cw=="},
	}
	for _, r := range []*Registration{
		{
			State:             dps.DeviceRegistrationState{RegistrationID: "Dev-1", Status: dps.StatusAssigning, SymmetricKey: &dps.SymmetricKeyRegistrationResult{EnrollmentGroupID: "grp"}},
			OperationID:       "4.0123456789abcdef.op",
			EnrollmentGroupID: "grp",
			DevicePayload:     json.RawMessage(`{"model":"x"}`),
			AttestationType:   dps.AttestationSymmetricKey,
			Work: &Work{
				Owner: "node/boot", LeaseUntil: time.Now().Add(10 * time.Second).UTC().Truncate(time.Millisecond),
				Target: json.RawMessage(`{"hub":"hub.example"}`), Final: final,
			},
		},
		final,
	} {
		put, err := PutRegistration(ctx, st, r, store.Condition{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := GetRegistration(ctx, st, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(put, got) {
			a, _ := json.Marshal(put)
			b, _ := json.Marshal(got)
			t.Errorf("PutRegistration returned\n%s\nthe store holds\n%s", a, b)
		}
		if put.Work != nil && put.Work == r.Work || put.Identity != nil && put.Identity == r.Identity {
			t.Error("PutRegistration returned the caller's Work or Identity, not a copy")
		}
	}
}
