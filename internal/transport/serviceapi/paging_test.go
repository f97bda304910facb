package serviceapi

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
)

func TestContinuationEncoding(t *testing.T) {
	tests := []struct {
		scope, after string
	}{
		{"enrollments", "dev1"},
		{"enrollmentGroups", "a:b.c_d-"},
		{"registrations/g1", strings.Repeat("x", 128)},
	}
	for _, tt := range tests {
		tok := encodeContinuation(tt.scope, tt.after)
		if tok == "" || strings.ContainsAny(tok, " \r\n,;") {
			t.Errorf("token %q is not a plain header value", tok)
		}
		got, err := decodeContinuation(tt.scope, tok)
		if err != nil || got != tt.after {
			t.Errorf("round trip of %q = %q, %v", tt.after, got, err)
		}
		if _, err := decodeContinuation("other", tok); err == nil {
			t.Errorf("token for %s accepted in another scope", tt.scope)
		}
	}
	for _, bad := range []string{"1", "!!", encodeContinuation("enrollments", "")} {
		if _, err := decodeContinuation("enrollments", bad); err == nil {
			t.Errorf("decodeContinuation(%q) accepted", bad)
		}
	}
	if got, err := decodeContinuation("enrollments", ""); got != "" || err != nil {
		t.Errorf("empty token = %q, %v", got, err)
	}
}

func TestPageSize(t *testing.T) {
	tests := []struct {
		header  string
		want    int
		wantErr bool
	}{
		{"", DefaultPageSize, false},
		{"1", 1, false},
		{"0", DefaultPageSize, false},
		{"-3", DefaultPageSize, false},
		{"1000", 1000, false},
		{"100000", MaxPageSize, false},
		{"ten", 0, true},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "/enrollments/query", nil)
		if tt.header != "" {
			r.Header.Set(dps.HeaderMaxItemCount, tt.header)
		}
		got, err := pageSize(&request{r: r})
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("pageSize(%q) = %d, %v; want %d, err %v", tt.header, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestQueryPaging(t *testing.T) {
	e := newEnv(t)
	// Empty collections answer [] with the item type and no continuation.
	for _, q := range []struct{ path, itemType string }{
		{"/enrollments/query", dps.ItemTypeEnrollment},
		{"/enrollmentGroups/query", dps.ItemTypeEnrollmentGroup},
		{"/registrations/g1/query", dps.ItemTypeDeviceRegistration},
	} {
		r := e.do(t, call{method: "POST", path: q.path, body: `{"query":"*"}`})
		if r.status != 200 || string(r.body) != "[]" || r.header.Get(dps.HeaderItemType) != q.itemType {
			t.Errorf("%s empty: %d %q item type %q", q.path, r.status, r.body, r.header.Get(dps.HeaderItemType))
		}
		if _, ok := r.header[http.CanonicalHeaderKey(dps.HeaderContinuation)]; ok {
			t.Errorf("%s empty: continuation header present", q.path)
		}
	}
	for i := range 5 {
		id := fmt.Sprintf("dev%d", i)
		if r := e.do(t, call{method: "PUT", path: "/enrollments/" + id, body: fmt.Sprintf(symBody, id)}); r.status != 200 {
			t.Fatalf("PUT: %d %s", r.status, r.body)
		}
		reg := &enroll.Registration{EnrollmentGroupID: "g1", State: dps.DeviceRegistrationState{RegistrationID: id, Status: dps.StatusAssigned}}
		if _, err := enroll.PutRegistration(t.Context(), e.st, reg, storeCondNone); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []struct{ path, body string }{
		{"/enrollments/query", `{"query":"*"}`},
		{"/registrations/g1/query", ""}, // the CLI sends no body
	} {
		var ids []string
		cont := ""
		pages := 0
		for range 10 { // bounded: 5 items in pages of 2 take 3 requests
			h := map[string]string{dps.HeaderMaxItemCount: "2"}
			if cont != "" {
				h[dps.HeaderContinuation] = cont
			}
			r := e.do(t, call{method: "POST", path: q.path, body: q.body, headers: h})
			if r.status != 200 {
				t.Fatalf("%s: %d %s", q.path, r.status, r.body)
			}
			pages++
			var page []struct {
				RegistrationID string `json:"registrationId"`
				Attestation    *dps.AttestationMechanism
			}
			r.decode(t, &page)
			for _, p := range page {
				ids = append(ids, p.RegistrationID)
				if p.Attestation != nil && p.Attestation.SymmetricKey != nil {
					t.Errorf("query shows keys of %s", p.RegistrationID)
				}
			}
			v, ok := r.header[http.CanonicalHeaderKey(dps.HeaderContinuation)]
			if !ok {
				break
			}
			if len(v) != 1 || v[0] == "" {
				t.Fatalf("continuation header %q", v)
			}
			cont = v[0]
		}
		if got := strings.Join(ids, ","); got != "dev0,dev1,dev2,dev3,dev4" || pages != 3 {
			t.Errorf("%s: ids %s in %d pages, want dev0..dev4 in 3", q.path, got, pages)
		}
	}
	// A token from one query is refused by another.
	r := e.do(t, call{method: "POST", path: "/enrollments/query", body: `{"query":"*"}`, headers: map[string]string{dps.HeaderMaxItemCount: "1"}})
	tok := r.header.Get(dps.HeaderContinuation)
	r = e.do(t, call{method: "POST", path: "/enrollmentGroups/query", body: `{"query":"*"}`, headers: map[string]string{dps.HeaderContinuation: tok}})
	if r.status != 400 || r.errorCode(t) != dps.CodeBadRequest {
		t.Errorf("foreign continuation: %d %s", r.status, r.body)
	}
	r = e.do(t, call{method: "POST", path: "/enrollments/query", body: `{"query":`})
	if r.status != 400 {
		t.Errorf("bad query body: %d %s", r.status, r.body)
	}
}

func TestBulkOverHTTP(t *testing.T) {
	e := newEnv(t)
	items := make([]string, 11)
	for i := range items {
		items[i] = fmt.Sprintf(symBody, fmt.Sprintf("b%d", i))
	}
	tests := []struct {
		name, path, body string
		wantStatus       int
		wantBody         string
	}{
		{"npm create with trailing slash", "/enrollments/", `{"mode":"create","enrollments":[{"registrationId":"bulk-1","attestation":{"type":"symmetricKey"}},{"registrationId":"bulk-2","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=","secondaryKey":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}}}]}`, 200, `{"isSuccessful":true,"errors":[]}`},
		{"create again fails per item", "/enrollments", `{"mode":"create","enrollments":[{"registrationId":"bulk-1","attestation":{"type":"symmetricKey"}}]}`, 200, `"registrationId":"bulk-1","errorCode":409001`},
		{"invalid item fails alone", "/enrollments", `{"mode":"update","enrollments":[{"registrationId":"t","attestation":{"type":"tpm","tpm":{}}},{"registrationId":"bulk-3","attestation":{"type":"symmetricKey"}}]}`, 200, `"registrationId":"t","errorCode":400004`},
		{"npm updateIfMatchEtag spelling", "/enrollments", `{"mode":"updateIfMatchEtag","enrollments":[{"registrationId":"bulk-1","etag":"\"nope\"","attestation":{"type":"symmetricKey"}}]}`, 200, `"errorCode":412001`},
		{"delete missing", "/enrollments", `{"mode":"delete","enrollments":[{"registrationId":"nonexistent-x"}]}`, 200, `"registrationId":"nonexistent-x","errorCode":404201`},
		{"groups", "/enrollmentGroups", `{"mode":"create","enrollmentGroups":[{"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey"}}]}`, 200, `{"isSuccessful":true,"errors":[]}`},
		{"group delete missing", "/enrollmentgroups/", `{"mode":"delete","enrollmentGroups":[{"enrollmentGroupId":"g9"}]}`, 200, `"enrollmentGroupId":"g9","errorCode":404204`},
		{"eleven items", "/enrollments", `{"mode":"create","enrollments":[` + strings.Join(items, ",") + `]}`, 400, `"errorCode":400004`},
		{"duplicates", "/enrollments", `{"mode":"create","enrollments":[` + items[0] + "," + items[0] + `]}`, 400, `"errorCode":400004`},
		{"bad mode", "/enrollments", `{"mode":"merge","enrollments":[` + items[0] + `]}`, 400, `"errorCode":400004`},
		{"not JSON", "/enrollments", `mode=create`, 400, `"errorCode":400004`},
	}
	for _, tt := range tests {
		r := e.do(t, call{method: "POST", path: tt.path, body: tt.body})
		if r.status != tt.wantStatus || !strings.Contains(string(r.body), tt.wantBody) {
			t.Errorf("%s: %d %s, want %d containing %s", tt.name, r.status, r.body, tt.wantStatus, tt.wantBody)
		}
	}
	if _, err := enroll.GetEnrollment(t.Context(), e.st, "b0"); err == nil {
		t.Errorf("a refused bulk request wrote b0")
	}
}

func TestRegistrationEndpoints(t *testing.T) {
	e := newEnv(t)
	reg, err := enroll.PutRegistration(t.Context(), e.st, &enroll.Registration{EnrollmentGroupID: "g1",
		State: dps.DeviceRegistrationState{RegistrationID: "dev1", Status: dps.StatusAssigned, AssignedHub: "h1"}}, storeCondNone)
	if err != nil {
		t.Fatal(err)
	}
	r := e.do(t, call{method: "GET", path: "/registrations/DEV1"})
	var st dps.DeviceRegistrationState
	r.decode(t, &st)
	if r.status != 200 || st.AssignedHub != "h1" || st.ETag != reg.State.ETag || r.header.Get("ETag") != st.ETag {
		t.Fatalf("GET registration: %d %s", r.status, r.body)
	}
	r = e.do(t, call{method: "DELETE", path: "/registrations/dev1", headers: map[string]string{"If-Match": `"reg-etag"`}})
	if r.status != 412 || r.errorCode(t) != dps.CodePreconditionFailed {
		t.Errorf("DELETE stale: %d %s", r.status, r.body)
	}
	r = e.do(t, call{method: "DELETE", path: "/registrations/dev1", headers: map[string]string{"If-Match": st.ETag}})
	if r.status != 204 {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	r = e.do(t, call{method: "DELETE", path: "/registrations/dev1"})
	if r.status != 404 || r.errorCode(t) != dps.CodeRegistrationNotFound {
		t.Errorf("DELETE again: %d %s", r.status, r.body)
	}
}
