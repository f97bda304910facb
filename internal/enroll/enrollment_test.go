package enroll

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

func TestPutEnrollmentPreconditions(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	created, err := PutEnrollment(ctx, st, "dev1", symEnrollment("dev1"), "")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !strings.HasPrefix(created.ETag, `"`) || !strings.HasSuffix(created.ETag, `"`) || len(created.ETag) < 3 {
		t.Fatalf("etag = %q, want a quoted value", created.ETag)
	}
	bare := strings.Trim(created.ETag, `"`)
	current := created.ETag

	// Each step runs against the state the previous steps left.
	steps := []struct {
		name     string
		id       string
		ifMatch  string // "<current>" is replaced by the latest etag
		wantCode int
	}{
		{"create again without If-Match", "dev1", "", dps.CodeConflict},
		{"create again with other case", "DEV1", "", dps.CodeConflict},
		{"stale etag", "dev1", `"00000000-stale"`, dps.CodePreconditionFailed},
		{"quoted current etag", "dev1", "<current>", 0},
		{"the previous etag is now stale", "dev1", created.ETag, dps.CodePreconditionFailed},
		{"unquoted current etag", "dev1", "<bare>", 0},
		{"weak current etag", "dev1", "<weak>", 0},
		{"star", "dev1", "*", 0},
		{"If-Match on a missing enrollment", "dev2", "*", dps.CodePreconditionFailed},
		{"etag on a missing enrollment", "dev2", `"x"`, dps.CodePreconditionFailed},
	}
	for _, s := range steps {
		ifMatch := s.ifMatch
		switch ifMatch {
		case "<current>":
			ifMatch = current
		case "<bare>":
			ifMatch = bare
		case "<weak>":
			ifMatch = "W/" + current
		}
		got, err := PutEnrollment(ctx, st, s.id, symEnrollment(s.id), ifMatch)
		if code := errCode(err); code != s.wantCode {
			t.Fatalf("%s: PutEnrollment error = %v (code %d), want code %d", s.name, err, code, s.wantCode)
		}
		if err == nil {
			if got.ETag == current {
				t.Errorf("%s: etag did not change", s.name)
			}
			current, bare = got.ETag, strings.Trim(got.ETag, `"`)
		}
	}
	if _, err := GetEnrollment(ctx, st, "dev2"); errCode(err) != dps.CodeEnrollmentNotFound {
		t.Errorf("a refused If-Match write created dev2: %v", err)
	}
}

func TestPutEnrollmentDefaultsAndKeys(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	e, err := PutEnrollment(ctx, st, "dev1", symEnrollment("dev1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if e.ProvisioningStatus != dps.ProvisioningEnabled {
		t.Errorf("provisioningStatus = %q", e.ProvisioningStatus)
	}
	if e.ReprovisionPolicy == nil || !e.ReprovisionPolicy.UpdateHubAssignment || !e.ReprovisionPolicy.MigrateDeviceData {
		t.Errorf("reprovisionPolicy = %+v, want true/true", e.ReprovisionPolicy)
	}
	if e.Capabilities == nil || e.Capabilities.IoTEdge {
		t.Errorf("capabilities = %+v, want iotEdge false", e.Capabilities)
	}
	if e.CreatedDateTimeUTC == nil || e.LastUpdatedDateTimeUTC == nil {
		t.Errorf("times not set")
	}
	sk := e.Attestation.SymmetricKey
	for _, k := range []string{sk.PrimaryKey, sk.SecondaryKey} {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 64 {
			t.Errorf("generated key %q: want 64 base64 bytes", k)
		}
	}
	if sk.PrimaryKey == sk.SecondaryKey {
		t.Errorf("generated keys are equal")
	}

	// An update after a GET carries no keys: the stored keys stay.
	upd := EnrollmentView(e, HideKeys)
	upd.ProvisioningStatus = dps.ProvisioningDisabled
	e2, err := PutEnrollment(ctx, st, "dev1", upd, e.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if *e2.Attestation.SymmetricKey != *sk {
		t.Errorf("update without keys changed them: %+v -> %+v", sk, e2.Attestation.SymmetricKey)
	}
	if !e2.CreatedDateTimeUTC.Equal(*e.CreatedDateTimeUTC) {
		t.Errorf("created time changed on update")
	}

	// Keys sent by an update replace the stored ones; an empty one is kept.
	upd = symEnrollment("dev1")
	upd.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: key16}
	e3, err := PutEnrollment(ctx, st, "dev1", upd, "*")
	if err != nil {
		t.Fatal(err)
	}
	if e3.Attestation.SymmetricKey.PrimaryKey != key16 || e3.Attestation.SymmetricKey.SecondaryKey != sk.SecondaryKey {
		t.Errorf("keys after partial update = %+v", e3.Attestation.SymmetricKey)
	}
	got, err := GetEnrollment(ctx, st, "DEV1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Attestation.SymmetricKey.PrimaryKey != key16 || got.ETag != e3.ETag || got.RegistrationID != "dev1" {
		t.Errorf("GetEnrollment = %+v, want the stored keys, etag %s and id dev1", got, e3.ETag)
	}
}

func TestPutEnrollmentIgnoresReadOnlyMembers(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	past := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	e := symEnrollment("dev1")
	e.ETag = `"bogus"`
	e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC = &past, &past
	e.RegistrationState = &dps.DeviceRegistrationState{RegistrationID: "dev1", Status: "assigned"}
	got, err := PutEnrollment(ctx, st, "dev1", e, "")
	if err != nil {
		t.Fatal(err)
	}
	if got.ETag == `"bogus"` || got.CreatedDateTimeUTC.Equal(past) || got.RegistrationState != nil {
		t.Errorf("read-only members were taken from the body: %+v", got)
	}
	rec, err := st.Get(ctx, store.KindEnrollment, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec.Data), "bogus") || strings.Contains(string(rec.Data), "registrationState") {
		t.Errorf("stored data holds read-only members: %s", rec.Data)
	}
}

func TestPutEnrollmentIDs(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	tests := []struct {
		name, path, body string
		wantCode         int
	}{
		{"body id differs", "dev1", "dev2", dps.CodeInvalidArgument},
		{"body id in other case", "dev3", "DEV3", 0},
		{"body id empty takes the path id", "dev4", "", 0},
		{"invalid path id", "dev 5", "dev 5", dps.CodeInvalidArgument},
	}
	for _, tt := range tests {
		_, err := PutEnrollment(ctx, st, tt.path, symEnrollment(tt.body), "")
		if errCode(err) != tt.wantCode {
			t.Errorf("%s: err = %v, want code %d", tt.name, err, tt.wantCode)
		}
	}
	if _, err := GetEnrollment(ctx, st, "dev1"); errCode(err) != dps.CodeEnrollmentNotFound {
		t.Errorf("refused write stored dev1: %v", err)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	e, err := PutEnrollment(ctx, st, "dev1", symEnrollment("dev1"), "")
	if err != nil {
		t.Fatal(err)
	}
	bad := symEnrollment("dev1")
	bad.AllocationPolicy = "custom" // without a definition
	if _, err := PutEnrollment(ctx, st, "dev1", bad, "*"); errCode(err) != dps.CodeInvalidArgument {
		t.Fatalf("invalid update: %v, want 400004", err)
	}
	got, err := GetEnrollment(ctx, st, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ETag != e.ETag || got.AllocationPolicy != "" {
		t.Errorf("a refused update changed the record: etag %s -> %s", e.ETag, got.ETag)
	}
}

func TestX509EnrollmentStoredAndShown(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	cert := newTestCert(t, "dev-x509")
	second := newTestCert(t, "dev-x509-2")
	for _, form := range []struct{ name, cert string }{{"pem", cert.pem}, {"b64der", cert.b64DER}, {"b64pem", cert.b64PEM}} {
		t.Run(form.name, func(t *testing.T) {
			id := "x509-" + form.name
			e := &dps.IndividualEnrollment{RegistrationID: id, Attestation: x509Client(form.cert)}
			e.Attestation.X509.ClientCertificates.Secondary = &dps.X509CertificateWithInfo{Certificate: second.b64DER}
			saved, err := PutEnrollment(ctx, st, id, e, "")
			if err != nil {
				t.Fatal(err)
			}
			p := saved.Attestation.X509.ClientCertificates.Primary
			if p.Certificate != cert.pem {
				t.Errorf("stored certificate is not the canonical PEM")
			}
			if p.Info == nil || p.Info.SubjectName != cert.subject {
				t.Errorf("info = %+v", p.Info)
			}
			view := EnrollmentView(saved, ShowKeys)
			data, _ := json.Marshal(view)
			if strings.Contains(string(data), `"certificate"`) {
				t.Errorf("view shows certificates: %s", data)
			}
			if !strings.Contains(string(data), `"subjectName":"CN=dev-x509, O=Contoso, C=US"`) {
				t.Errorf("view lacks info: %s", data)
			}
			// The CLI's update sends back the info-only view: certificates stay.
			updated, err := PutEnrollment(ctx, st, id, view, view.ETag)
			if err != nil {
				t.Fatalf("update with info-only certificates: %v", err)
			}
			c := updated.Attestation.X509.ClientCertificates
			if c.Primary.Certificate != cert.pem || c.Secondary == nil || c.Secondary.Certificate != second.pem {
				t.Errorf("update lost the stored certificates")
			}
		})
	}
}

func TestViewsHideKeys(t *testing.T) {
	e := symEnrollment("dev1")
	e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: key16, SecondaryKey: key64}
	hidden, _ := json.Marshal(EnrollmentView(e, HideKeys))
	if !strings.Contains(string(hidden), `"attestation":{"type":"symmetricKey"}`) || strings.Contains(string(hidden), key16) {
		t.Errorf("HideKeys view = %s", hidden)
	}
	shown, _ := json.Marshal(EnrollmentView(e, ShowKeys))
	if !strings.Contains(string(shown), key16) || !strings.Contains(string(shown), key64) {
		t.Errorf("ShowKeys view = %s", shown)
	}
	if e.Attestation.SymmetricKey == nil {
		t.Errorf("view modified the stored enrollment")
	}
	g := symGroup("g1")
	g.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: key16}
	gh, _ := json.Marshal(GroupView(g, HideKeys))
	if strings.Contains(string(gh), key16) {
		t.Errorf("group HideKeys view = %s", gh)
	}
	att, _ := json.Marshal(AttestationView(g.Attestation))
	if !strings.Contains(string(att), key16) {
		t.Errorf("AttestationView = %s", att)
	}
}

func TestGroupsAndNotFound(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	if _, err := GetGroup(ctx, st, "g1"); errCode(err) != dps.CodeEnrollmentGroupNotFound {
		t.Errorf("GetGroup missing: %v", err)
	}
	if err := DeleteGroup(ctx, st, "g1", ""); errCode(err) != dps.CodeEnrollmentGroupNotFound {
		t.Errorf("DeleteGroup missing: %v", err)
	}
	if err := DeleteEnrollment(ctx, st, "d1", ""); errCode(err) != dps.CodeEnrollmentNotFound {
		t.Errorf("DeleteEnrollment missing: %v", err)
	}
	for _, id := range []string{"g3", "g1", "G2"} {
		if _, err := PutGroup(ctx, st, id, symGroup(id), ""); err != nil {
			t.Fatal(err)
		}
	}
	g, err := GetGroup(ctx, st, "g1")
	if err != nil || g.Attestation.SymmetricKey == nil || g.Attestation.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("GetGroup = %+v, %v; want keys", g, err)
	}
	if err := DeleteGroup(ctx, st, "g1", `"stale"`); errCode(err) != dps.CodePreconditionFailed {
		t.Errorf("DeleteGroup stale etag: %v", err)
	}
	var ids []string
	opt := store.ListOptions{Limit: 2}
	for range 5 {
		page, more, err := ListGroups(ctx, st, opt)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range page {
			if g.Attestation.SymmetricKey == nil {
				t.Errorf("ListGroups hides keys of %s", g.EnrollmentGroupID)
			}
			ids = append(ids, g.EnrollmentGroupID)
		}
		if !more {
			break
		}
		opt.After = ids[len(ids)-1]
	}
	if got := strings.Join(ids, ","); got != "g1,G2,g3" {
		t.Errorf("ListGroups ids = %s", got)
	}
	if err := DeleteGroup(ctx, st, "g1", g.ETag); err != nil {
		t.Errorf("DeleteGroup with quoted etag: %v", err)
	}
}
