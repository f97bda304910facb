package enroll

import (
	"fmt"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

func TestBulkRequestRefused(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	many := make([]dps.IndividualEnrollment, 11)
	for i := range many {
		many[i] = *symEnrollment(fmt.Sprintf("d%d", i))
	}
	tests := []struct {
		name string
		op   dps.BulkEnrollmentOperation
	}{
		{"more than ten", dps.BulkEnrollmentOperation{Mode: "create", Enrollments: many}},
		{"none", dps.BulkEnrollmentOperation{Mode: "create"}},
		{"duplicate ids", dps.BulkEnrollmentOperation{Mode: "create", Enrollments: []dps.IndividualEnrollment{*symEnrollment("a"), *symEnrollment("A")}}},
		{"bad mode", dps.BulkEnrollmentOperation{Mode: "upsert", Enrollments: []dps.IndividualEnrollment{*symEnrollment("a")}}},
		{"no mode", dps.BulkEnrollmentOperation{Enrollments: []dps.IndividualEnrollment{*symEnrollment("a")}}},
	}
	for _, tt := range tests {
		res, err := BulkEnrollments(ctx, st, &tt.op)
		if errCode(err) != dps.CodeInvalidArgument || res != nil {
			t.Errorf("%s: BulkEnrollments = %+v, %v; want a 400004 error", tt.name, res, err)
		}
	}
	if list, _, err := ListEnrollments(ctx, st, store.ListOptions{Limit: 1000}); err != nil || len(list) != 0 {
		t.Errorf("refused bulk requests wrote %d enrollments (%v)", len(list), err)
	}
}

func TestBulkEnrollmentModes(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	existing, err := PutEnrollment(ctx, st, "exists", symEnrollment("exists"), "")
	if err != nil {
		t.Fatal(err)
	}
	badTPM := dps.IndividualEnrollment{RegistrationID: "bad-tpm", Attestation: &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{}}}
	stale := *symEnrollment("exists")
	stale.ETag = `"stale"`
	current := *symEnrollment("exists")
	current.ETag = existing.ETag

	type itemErr struct {
		id   string
		code int
	}
	// Each case runs on the state the earlier cases left.
	tests := []struct {
		name  string
		mode  string
		items []dps.IndividualEnrollment
		want  []itemErr
	}{
		{"create: existing and invalid items fail, others are created", "create",
			[]dps.IndividualEnrollment{*symEnrollment("new1"), *symEnrollment("exists"), badTPM},
			[]itemErr{{"exists", dps.CodeConflict}, {"bad-tpm", dps.CodeInvalidArgument}}},
		{"update upserts", "update",
			[]dps.IndividualEnrollment{*symEnrollment("exists"), *symEnrollment("new2")}, nil},
		{"updateIfMatchEtag (npm spelling) with a stale etag", "updateIfMatchEtag",
			[]dps.IndividualEnrollment{stale}, []itemErr{{"exists", dps.CodePreconditionFailed}}},
		{"updateIfMatchETag with an old etag after the upsert", "UPDATEIFMATCHETAG",
			[]dps.IndividualEnrollment{current}, []itemErr{{"exists", dps.CodePreconditionFailed}}},
		{"delete: missing items fail", "delete",
			[]dps.IndividualEnrollment{{RegistrationID: "new1"}, {RegistrationID: "ghost"}, stale},
			[]itemErr{{"ghost", dps.CodeEnrollmentNotFound}, {"exists", dps.CodePreconditionFailed}}},
	}
	for _, tt := range tests {
		res, err := BulkEnrollments(ctx, st, &dps.BulkEnrollmentOperation{Mode: tt.mode, Enrollments: tt.items})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if res.IsSuccessful != (len(tt.want) == 0) || len(res.Errors) != len(tt.want) {
			t.Fatalf("%s: result %+v, want errors %v", tt.name, res, tt.want)
		}
		for i, w := range tt.want {
			if got := res.Errors[i]; got.RegistrationID != w.id || got.ErrorCode != w.code || got.ErrorStatus == "" || got.EnrollmentGroupID != "" {
				t.Errorf("%s: error %d = %+v, want %v", tt.name, i, got, w)
			}
		}
	}
	for id, want := range map[string]int{"new1": dps.CodeEnrollmentNotFound, "new2": 0, "exists": 0, "bad-tpm": dps.CodeEnrollmentNotFound} {
		if _, err := GetEnrollment(ctx, st, id); errCode(err) != want {
			t.Errorf("after bulk, GetEnrollment(%s) = %v, want code %d", id, err, want)
		}
	}
}

func TestBulkGroups(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	res, err := BulkGroups(ctx, st, &dps.BulkEnrollmentGroupOperation{Mode: "create", EnrollmentGroups: []dps.EnrollmentGroup{
		*symGroup("g1"),
		{EnrollmentGroupID: "g-tpm", Attestation: &dps.AttestationMechanism{Type: "tpm", TPM: &dps.TPMAttestation{EndorsementKey: "AAAA"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].EnrollmentGroupID != "g-tpm" || res.Errors[0].RegistrationID != "" {
		t.Fatalf("result = %+v", res)
	}
	res, err = BulkGroups(ctx, st, &dps.BulkEnrollmentGroupOperation{Mode: "delete", EnrollmentGroups: []dps.EnrollmentGroup{{EnrollmentGroupID: "g1"}, {EnrollmentGroupID: "g2"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || res.Errors[0].ErrorCode != dps.CodeEnrollmentGroupNotFound {
		t.Fatalf("delete result = %+v", res)
	}
}
