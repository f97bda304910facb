package serviceapi

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/instance"
)

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	owner := instance.OwnerPolicy
	hour := now.Add(time.Hour)
	tests := []struct {
		name       string
		auth       string
		wantStatus int
	}{
		{"npm: raw host name", token(t, testHostName, owner, ownerKey, hour), 200},
		{"host name in other case, signed as sent", token(t, strings.ToUpper(testHostName), owner, ownerKey, hour), 200},
		{"IP address host", token(t, "127.0.0.1", owner, ownerKey, hour), 200},
		{"C#/CLI: URL-encoded sr signed encoded", token(t, url.QueryEscape("localhost:8443"), owner, ownerKey, hour), 200},
		{"C: lower-case percent escapes", token(t, "localhost%3a8443", owner, ownerKey, hour), 200},
		{"sr encoded but signed decoded", reSR(t, token(t, "localhost:8443", owner, ownerKey, hour), "localhost%3A8443"), 200},
		{"sr raw but signed encoded lower-case", reSR(t, token(t, "mydps.azure-devices-provisioning.net", owner, ownerKey, hour), "MyDps.Azure-Devices-Provisioning.net"), 200},
		{"resource URI under the host", token(t, testHostName+"/enrollments", owner, ownerKey, hour), 200},
		{"secondary key", token(t, testHostName, owner, ownerKey2, hour), 200},
		{"policy name in other case", token(t, testHostName, "ProvisioningServiceOwner", ownerKey, hour), 200},
		{"fields in C# order", csharpOrder(t, token(t, testHostName, owner, ownerKey, hour)), 200},
		{"expired", token(t, testHostName, owner, ownerKey, now.Add(-time.Second)), 401},
		{"expires now", token(t, testHostName, owner, ownerKey, now), 401},
		{"wrong key", token(t, testHostName, owner, readerKey, hour), 401},
		{"unknown policy", token(t, testHostName, "nobody", ownerKey, hour), 401},
		{"no policy name", token(t, testHostName, "", ownerKey, hour), 401},
		{"other audience", token(t, "otherdps.azure-devices-provisioning.net", owner, ownerKey, hour), 401},
		{"audience prefix is not a segment", token(t, testHostName+".evil.example", owner, ownerKey, hour), 401},
		{"no token", "-", 401},
		{"bearer token", "Bearer abc", 401},
		{"malformed", "SharedAccessSignature sr=x", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, call{method: "POST", path: "/enrollments/query", body: `{"query":"*"}`, auth: tt.auth})
			if r.status != tt.wantStatus {
				t.Fatalf("status = %d (%s), want %d", r.status, r.body, tt.wantStatus)
			}
			if r.status == 401 && r.errorCode(t) != dps.CodeUnauthorized {
				t.Errorf("errorCode is not 401000")
			}
		})
	}
}

// reSR replaces the sr of a signed token, keeping its signature.
func reSR(t *testing.T, tok, sr string) string {
	t.Helper()
	_, rest, ok := strings.Cut(tok, "sr=")
	if !ok {
		t.Fatal("no sr")
	}
	_, rest, _ = strings.Cut(rest, "&")
	return "SharedAccessSignature sr=" + sr + "&" + rest
}

// csharpOrder reorders "sr, sig, se, skn" into "sig, se, skn, sr" (the docs' order).
func csharpOrder(t *testing.T, tok string) string {
	t.Helper()
	fields := strings.Split(strings.TrimPrefix(tok, "SharedAccessSignature "), "&")
	return "SharedAccessSignature " + strings.Join(append(fields[1:], fields[0]), "&")
}

func TestRights(t *testing.T) {
	e := newEnv(t)
	reader := token(t, testHostName, "enrollmentread", readerKey, now.Add(time.Hour))
	if r := e.do(t, call{method: "PUT", path: "/enrollments/dev1", body: fmt.Sprintf(symBody, "dev1")}); r.status != 200 {
		t.Fatalf("owner PUT: %d %s", r.status, r.body)
	}
	tests := []struct {
		method, path, body string
		wantStatus         int
	}{
		{"GET", "/enrollments/dev1", "", 200},
		{"POST", "/enrollments/dev1/attestationmechanism", "", 200},
		{"POST", "/enrollmentGroups/query", `{"query":"*"}`, 200},
		{"PUT", "/enrollments/dev2", fmt.Sprintf(symBody, "dev2"), 401},
		{"DELETE", "/enrollments/dev1", "", 401},
		{"POST", "/enrollments", `{"mode":"delete","enrollments":[{"registrationId":"dev1"}]}`, 401},
		{"GET", "/registrations/dev1", "", 401},
		{"DELETE", "/registrations/dev1", "", 401},
		{"POST", "/registrations/g1/query", "", 401},
	}
	for _, tt := range tests {
		r := e.do(t, call{method: tt.method, path: tt.path, body: tt.body, auth: reader})
		if r.status != tt.wantStatus {
			t.Errorf("%s %s with EnrollmentRead only: %d %s, want %d", tt.method, tt.path, r.status, r.body, tt.wantStatus)
			continue
		}
		if r.status == 401 {
			r.errorCode(t)
			if !strings.Contains(string(r.body), "does not grant") {
				t.Errorf("message does not name the missing right: %s", r.body)
			}
		}
	}
}

func TestAPIVersion(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		query      string
		wantStatus int
	}{
		{"", 400},
		{"?api-version=", 400},
		{"?api-version=2017-11-15", 200},
		{"?api-version=2018-04-01", 200},
		{"?api-version=2018-09-01-preview", 200},
		{"?api-version=2019-03-31", 200},
		{"?api-version=2021-06-01", 200},
		{"?api-version=2021-10-01", 200},
		{"?api-version=2021-11-01-preview", 200},
		{"?api-version=2025-07-01-preview", 200},
		{"?api-version=2031-02-03", 200},
		{"?api-version=2031-02-03-preview", 200},
		{"?api-version=2016-01-01", 400},
		{"?api-version=2021-13-01", 400},
		{"?api-version=latest", 400},
		{"?api-version=2021-10-01-beta", 400},
	}
	for _, tt := range tests {
		r := e.do(t, call{method: "POST", path: "/enrollments/query" + tt.query, body: `{"query":"*"}`, noVersion: true})
		if r.status != tt.wantStatus {
			t.Errorf("%q: status %d (%s), want %d", tt.query, r.status, r.body, tt.wantStatus)
		}
		if r.status == 400 && r.errorCode(t) != dps.CodeBadRequest {
			t.Errorf("%q: not 400000", tt.query)
		}
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"dev1", "a:b", "query"} {
		if r := e.do(t, call{method: "PUT", path: "/enrollments/" + url.PathEscape(id), body: fmt.Sprintf(symBody, id)}); r.status != 200 {
			t.Fatalf("PUT %s: %d %s", id, r.status, r.body)
		}
	}
	if r := e.do(t, call{method: "PUT", path: "/enrollmentGroups/g1", body: `{"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey"}}`}); r.status != 200 {
		t.Fatalf("PUT group: %d %s", r.status, r.body)
	}
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode                 int
	}{
		{"get", "GET", "/enrollments/dev1", "", 200, 0},
		{"collection in other case", "GET", "/ENROLLMENTS/dev1", "", 200, 0},
		{"id in other case", "GET", "/enrollments/DEV1", "", 200, 0},
		{"trailing slash", "GET", "/enrollments/dev1/", "", 200, 0},
		{"percent-encoded colon", "GET", "/enrollments/a%3Ab", "", 200, 0},
		{"enrollment named query", "GET", "/enrollments/query", "", 200, 0},
		{"enrollmentGroups", "GET", "/enrollmentGroups/g1", "", 200, 0},
		{"npm lower-case enrollmentgroups attestation", "POST", "/enrollmentgroups/g1/attestationmechanism", "", 200, 0},
		{"attestation body-less", "POST", "/enrollments/dev1/attestationmechanism", "", 200, 0},
		{"attestation segment case", "POST", "/enrollments/dev1/AttestationMechanism", "", 200, 0},
		{"bulk with trailing slash (npm)", "POST", "/enrollments/", `{"mode":"delete","enrollments":[{"registrationId":"nobody"}]}`, 200, 0},
		{"bulk without slash", "POST", "/enrollments", `{"mode":"delete","enrollments":[{"registrationId":"nobody"}]}`, 200, 0},
		{"group query lower-case, trailing slash", "POST", "/enrollmentgroups/query/", `{"query":"*"}`, 200, 0},
		{"registration query with no body (CLI)", "POST", "/registrations/g1/query", "", 200, 0},
		{"registration query body", "POST", "/registrations/g1/Query", `{"query":"*"}`, 200, 0},
		{"missing enrollment", "GET", "/enrollments/nope", "", 404, dps.CodeEnrollmentNotFound},
		{"missing group", "GET", "/enrollmentGroups/nope", "", 404, dps.CodeEnrollmentGroupNotFound},
		{"missing registration", "GET", "/registrations/nope", "", 404, dps.CodeRegistrationNotFound},
		{"missing attestation", "POST", "/enrollments/nope/attestationmechanism", "", 404, dps.CodeEnrollmentNotFound},
		{"GET on the collection", "GET", "/enrollments", "", 405, dps.CodeMethodNotAllowed},
		{"POST on an id", "POST", "/enrollments/dev1", "", 405, dps.CodeMethodNotAllowed},
		{"GET on attestation", "GET", "/enrollments/dev1/attestationmechanism", "", 405, dps.CodeMethodNotAllowed},
		{"PUT on registration", "PUT", "/registrations/dev1", "{}", 405, dps.CodeMethodNotAllowed},
		{"unknown collection", "GET", "/devices/dev1", "", 404, dps.CodeNotFound},
		{"unknown sub-resource", "POST", "/enrollments/dev1/other", "", 404, dps.CodeNotFound},
		{"too deep", "GET", "/enrollments/dev1/attestationmechanism/x", "", 404, dps.CodeNotFound},
		{"root", "GET", "/", "", 404, dps.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, call{method: tt.method, path: tt.path, body: tt.body})
			if r.status != tt.wantStatus {
				t.Fatalf("status = %d (%s), want %d", r.status, r.body, tt.wantStatus)
			}
			if tt.wantCode != 0 && r.errorCode(t) != tt.wantCode {
				t.Errorf("errorCode = %s, want %d", r.body, tt.wantCode)
			}
			if r.status == 405 && r.header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
		})
	}
}

func TestEnrollmentLifecycle(t *testing.T) {
	e := newEnv(t)
	body := `{"registrationId":"device-01","deviceId":"device-01","attestation":{"type":"symmetricKey"},"provisioningStatus":"enabled","capabilities":{"iotEdge":false},"initialTwin":{"tags":{"site":"lab"},"properties":{"desired":{"interval":30}}},"reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":false},"allocationPolicy":"custom","customAllocationDefinition":{"webhookUrl":"https://func.example/api/alloc?code=secret","apiVersion":"2021-10-01"},"iotHubs":["hub1.azure-devices.net","hub2.azure-devices.net"],"futureMember":1}`
	r := e.do(t, call{method: "PUT", path: "/enrollments/device-01", body: body})
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created dps.IndividualEnrollment
	r.decode(t, &created)
	sk := created.Attestation.SymmetricKey
	if sk == nil || len(sk.PrimaryKey) != 88 || len(sk.SecondaryKey) != 88 {
		t.Fatalf("create response lacks generated keys: %s", r.body)
	}
	if r.header.Get("ETag") != created.ETag || !strings.HasPrefix(created.ETag, `"`) {
		t.Errorf("ETag header %q, body etag %q", r.header.Get("ETag"), created.ETag)
	}
	if !strings.Contains(string(r.body), `"initialTwin":{"tags":{"site":"lab"},"properties":{"desired":{"interval":30}}}`) {
		t.Errorf("initial twin not verbatim: %s", r.body)
	}

	// GET hides keys and shows the registration state once there is one.
	r = e.do(t, call{method: "GET", path: "/enrollments/device-01"})
	if r.status != 200 || strings.Contains(string(r.body), sk.PrimaryKey) || !strings.Contains(string(r.body), `"attestation":{"type":"symmetricKey"}`) {
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	if strings.Contains(string(r.body), "registrationState") {
		t.Errorf("registrationState before registering: %s", r.body)
	}
	reg := &enroll.Registration{State: dps.DeviceRegistrationState{RegistrationID: "device-01", Status: dps.StatusAssigned, AssignedHub: "hub1.azure-devices.net", DeviceID: "device-01"}}
	if _, err := enroll.PutRegistration(t.Context(), e.st, reg, storeCondNone); err != nil {
		t.Fatal(err)
	}
	r = e.do(t, call{method: "GET", path: "/enrollments/device-01"})
	var got dps.IndividualEnrollment
	r.decode(t, &got)
	if got.RegistrationState == nil || got.RegistrationState.AssignedHub != "hub1.azure-devices.net" {
		t.Errorf("GET after registering: %s", r.body)
	}

	// The attestation lookup shows the keys.
	r = e.do(t, call{method: "POST", path: "/enrollments/device-01/attestationmechanism"})
	var att dps.AttestationMechanism
	r.decode(t, &att)
	if att.SymmetricKey == nil || *att.SymmetricKey != *sk {
		t.Errorf("attestation = %s", r.body)
	}

	// npm's update re-sends the PUT response with read-only members and the
	// quoted etag as If-Match.
	upd := strings.Replace(string(mustJSON(t, created)), `"provisioningStatus":"enabled"`, `"provisioningStatus":"disabled"`, 1)
	r = e.do(t, call{method: "PUT", path: "/enrollments/device-01", body: upd, headers: map[string]string{"If-Match": created.ETag}})
	if r.status != 200 {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	var updated dps.IndividualEnrollment
	r.decode(t, &updated)
	if updated.ProvisioningStatus != "disabled" || updated.ETag == created.ETag || *updated.Attestation.SymmetricKey != *sk {
		t.Errorf("update response: %s", r.body)
	}
	tests := []struct {
		name     string
		c        call
		wantCode int
	}{
		{"stale etag", call{method: "PUT", path: "/enrollments/device-01", body: upd, headers: map[string]string{"If-Match": created.ETag}}, dps.CodePreconditionFailed},
		{"blind overwrite", call{method: "PUT", path: "/enrollments/device-01", body: fmt.Sprintf(symBody, "device-01")}, dps.CodeConflict},
		{"id mismatch", call{method: "PUT", path: "/enrollments/device-02", body: fmt.Sprintf(symBody, "device-01")}, dps.CodeInvalidArgument},
		{"invalid JSON", call{method: "PUT", path: "/enrollments/device-02", body: `{"registrationId":`}, dps.CodeInvalidArgument},
		{"wrong member type", call{method: "PUT", path: "/enrollments/device-02", body: `{"registrationId":"device-02","attestation":"x"}`}, dps.CodeInvalidArgument},
		{"no body", call{method: "PUT", path: "/enrollments/device-02", body: ""}, dps.CodeInvalidArgument},
		{"too deep", call{method: "PUT", path: "/enrollments/device-02", body: strings.Repeat("[", 100) + strings.Repeat("]", 100)}, dps.CodeInvalidArgument},
		{"too large", call{method: "PUT", path: "/enrollments/device-02", body: `{"deviceId":"` + strings.Repeat("x", MaxBodyBytes) + `"}`}, dps.CodeRequestEntityTooLarge},
		{"delete with stale etag", call{method: "DELETE", path: "/enrollments/device-01", headers: map[string]string{"If-Match": created.ETag}}, dps.CodePreconditionFailed},
	}
	for _, tt := range tests {
		r := e.do(t, tt.c)
		if code := r.errorCode(t); code != tt.wantCode {
			t.Errorf("%s: %d %s, want code %d", tt.name, r.status, r.body, tt.wantCode)
		}
	}
	r = e.do(t, call{method: "DELETE", path: "/enrollments/device-01", headers: map[string]string{"If-Match": updated.ETag}})
	if r.status != 204 || len(r.body) != 0 {
		t.Fatalf("DELETE: %d %q", r.status, r.body)
	}
	r = e.do(t, call{method: "DELETE", path: "/enrollments/device-01"})
	if r.status != 404 || r.errorCode(t) != dps.CodeEnrollmentNotFound {
		t.Errorf("second DELETE: %d %s", r.status, r.body)
	}
}

func TestGroupX509OverHTTP(t *testing.T) {
	e := newEnv(t)
	pemCert := newPEMCert(t, "contoso-root")
	body := fmt.Sprintf(`{"enrollmentGroupId":"group-1","attestation":{"type":"x509","x509":{"signingCertificates":{"primary":{"certificate":%q}}}},"allocationPolicy":"hashed","iotHubs":["hub1.azure-devices.net"]}`, pemCert)
	r := e.do(t, call{method: "PUT", path: "/enrollmentGroups/group-1", body: body})
	if r.status != 200 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	for _, c := range []call{
		{method: "PUT", path: "/enrollmentGroups/group-1", body: body, headers: map[string]string{"If-Match": "*"}},
		{method: "GET", path: "/enrollmentGroups/group-1"},
		{method: "POST", path: "/enrollmentgroups/group-1/attestationmechanism"},
		{method: "POST", path: "/enrollmentGroups/query", body: `{"query":"SELECT *"}`},
	} {
		r := e.do(t, c)
		if r.status != 200 || strings.Contains(string(r.body), "BEGIN CERTIFICATE") || !strings.Contains(string(r.body), `"subjectName":"CN=contoso-root"`) {
			t.Errorf("%s %s: %d %s; want info only", c.method, c.path, r.status, r.body)
		}
	}
	g, err := enroll.GetGroup(t.Context(), e.st, "group-1")
	if err != nil || !strings.Contains(g.Attestation.X509.SigningCertificates.Primary.Certificate, "BEGIN CERTIFICATE") {
		t.Errorf("stored group lacks its certificate: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestMalformedEndorsementKey: a TPM enrollment whose endorsementKey is no
// RSA endorsement key's public area is refused with 400 in Azure's error
// shape, and nothing is stored.
func TestMalformedEndorsementKey(t *testing.T) {
	e := newEnv(t)
	for _, ek := range []string{"AToAAQALAAMAsgAg", "AAAA"} {
		body := `{"registrationId":"tpm-bad","attestation":{"type":"tpm","tpm":{"endorsementKey":"` + ek + `"}}}`
		r := e.do(t, call{method: "PUT", path: "/enrollments/tpm-bad", body: body})
		if r.status != 400 || r.errorCode(t) != dps.CodeInvalidArgument || !strings.Contains(string(r.body), "endorsementKey") {
			t.Fatalf("%s: %d %s", ek, r.status, r.body)
		}
	}
	if r := e.do(t, call{method: "GET", path: "/enrollments/tpm-bad"}); r.status != 404 {
		t.Fatalf("a refused enrollment was stored: %d", r.status)
	}
}
