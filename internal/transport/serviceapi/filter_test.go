package serviceapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
)

// queryAll pages through a query with pages of pageSize and returns the
// registration ids (or group ids) of the items, and how many requests
// it took.
func (e *env) queryAll(t *testing.T, path, query string, pageSize int) (ids []string, pages int) {
	t.Helper()
	body, _ := json.Marshal(dps.QuerySpecification{Query: query})
	cont := ""
	for range 1000 { // bounded
		h := map[string]string{dps.HeaderMaxItemCount: fmt.Sprint(pageSize)}
		if cont != "" {
			h[dps.HeaderContinuation] = cont
		}
		r := e.do(t, call{method: "POST", path: path, body: string(body), headers: h})
		if r.status != 200 {
			t.Fatalf("%s %q: %d %s", path, query, r.status, r.body)
		}
		pages++
		var page []struct {
			RegistrationID    string `json:"registrationId"`
			EnrollmentGroupID string `json:"enrollmentGroupId"`
		}
		r.decode(t, &page)
		if len(page) > pageSize {
			t.Fatalf("page of %d items, asked for %d", len(page), pageSize)
		}
		for _, p := range page {
			ids = append(ids, p.RegistrationID+p.EnrollmentGroupID)
		}
		cont = r.header.Get(dps.HeaderContinuation)
		if cont == "" {
			return ids, pages
		}
	}
	t.Fatalf("%s %q: no end after 1000 pages", path, query)
	return nil, 0
}

// TestFilteredQueries: WHERE filters enrollments, groups and
// registrations, pages of any size hold every match once and in order,
// and what the filter language does not support is a 400.
func TestFilteredQueries(t *testing.T) {
	e := newEnv(t)
	// 30 enrollments: every third disabled, every second custom.
	var wantBoth []string
	for i := range 30 {
		id := fmt.Sprintf("dev%02d", i)
		en := map[string]any{
			"registrationId":     id,
			"attestation":        map[string]any{"type": "symmetricKey"},
			"provisioningStatus": map[bool]string{true: "disabled", false: "enabled"}[i%3 == 0],
		}
		if i%2 == 0 {
			en["allocationPolicy"] = "custom"
			en["customAllocationDefinition"] = map[string]any{"webhookUrl": "https://example.com/a", "apiVersion": "2019-03-31"}
		}
		if i%3 != 0 && i%2 == 0 {
			wantBoth = append(wantBoth, id)
		}
		if r := e.do(t, call{method: "PUT", path: "/enrollments/" + id, body: string(mustJSON(t, en))}); r.status != 200 {
			t.Fatalf("PUT %s: %d %s", id, r.status, r.body)
		}
	}
	const both = "SELECT * FROM enrollments WHERE provisioningStatus = 'enabled' AND allocationPolicy = 'custom'"
	for _, size := range []int{1, 3, 7, 100} {
		ids, pages := e.queryAll(t, "/enrollments/query", both, size)
		if got, want := strings.Join(ids, ","), strings.Join(wantBoth, ","); got != want {
			t.Errorf("page size %d: %s, want %s", size, got, want)
		}
		if size == 1 && pages < len(wantBoth) {
			t.Errorf("page size 1: %d pages for %d items", pages, len(wantBoth))
		}
	}
	if ids, _ := e.queryAll(t, "/enrollments/query", "SELECT * FROM enrollments", 100); len(ids) != 30 {
		t.Errorf("SELECT * found %d, want 30", len(ids))
	}
	if ids, _ := e.queryAll(t, "/enrollments/query", "SELECT * FROM enrollments WHERE registrationId IN ('dev05', 'DEV07', 'nope')", 10); strings.Join(ids, ",") != "dev05,dev07" {
		t.Errorf("IN: %v", ids)
	}

	// Groups.
	for i, status := range []string{"enabled", "disabled", "enabled"} {
		g := map[string]any{"enrollmentGroupId": fmt.Sprintf("g%d", i), "attestation": map[string]any{"type": "symmetricKey"}, "provisioningStatus": status}
		if r := e.do(t, call{method: "PUT", path: fmt.Sprintf("/enrollmentGroups/g%d", i), body: string(mustJSON(t, g))}); r.status != 200 {
			t.Fatalf("PUT group: %d %s", r.status, r.body)
		}
	}
	if ids, _ := e.queryAll(t, "/enrollmentGroups/query", "SELECT * FROM enrollmentGroups WHERE provisioningStatus = 'enabled'", 1); strings.Join(ids, ",") != "g0,g2" {
		t.Errorf("groups: %v", ids)
	}

	// Registrations of a group, by hub and status.
	for i := range 6 {
		st := dps.DeviceRegistrationState{RegistrationID: fmt.Sprintf("r%d", i), Status: dps.StatusAssigned, AssignedHub: fmt.Sprintf("hub%d.example.com", i%2)}
		if i == 5 {
			st.Status, st.AssignedHub = dps.StatusFailed, ""
		}
		if _, err := enroll.PutRegistration(t.Context(), e.st, &enroll.Registration{EnrollmentGroupID: "g0", State: st}, storeCondNone); err != nil {
			t.Fatal(err)
		}
	}
	for q, want := range map[string]string{
		"SELECT * FROM registrations WHERE assignedHub = 'hub1.example.com'":                          "r1,r3",
		"SELECT * FROM registrations WHERE status = 'failed'":                                         "r5",
		"SELECT * FROM registrations WHERE status = 'assigned' AND assignedHub != 'hub1.example.com'": "r0,r2,r4",
	} {
		if ids, _ := e.queryAll(t, "/registrations/g0/query", q, 2); strings.Join(ids, ",") != want {
			t.Errorf("%s: %v, want %s", q, ids, want)
		}
	}

	// Unsupported syntax: 400 in Azure's error shape, naming the problem.
	for _, q := range []string{
		"SELECT registrationId FROM enrollments",
		"SELECT * FROM enrollments WHERE provisioningStatus LIKE 'en%'",
		"SELECT * FROM enrollments ORDER BY registrationId",
	} {
		r := e.do(t, call{method: "POST", path: "/enrollments/query", body: string(mustJSON(t, dps.QuerySpecification{Query: q}))})
		if r.status != http.StatusBadRequest || r.errorCode(t) != dps.CodeBadRequest || !strings.Contains(string(r.body), "Unsupported query") {
			t.Errorf("%q: %d %s", q, r.status, r.body)
		}
	}
}

// TestFilteredQueryReadsBounded: a filter that matches nothing answers
// pages that read at most maxExamined records each, with continuations,
// rather than reading the whole collection in one request.
func TestFilteredQueryReadsBounded(t *testing.T) {
	e := newEnv(t)
	n := maxExamined + maxExamined/2
	ops := make([]dps.IndividualEnrollment, 0, dps.MaxBulkItems)
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := enroll.BulkEnrollments(t.Context(), e.st, &dps.BulkEnrollmentOperation{Mode: dps.BulkCreate, Enrollments: ops}); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range n {
		ops = append(ops, dps.IndividualEnrollment{RegistrationID: fmt.Sprintf("d%05d", i),
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}})
		if len(ops) == dps.MaxBulkItems {
			flush()
		}
	}
	flush()
	ids, pages := e.queryAll(t, "/enrollments/query", "SELECT * FROM enrollments WHERE registrationId = 'nope'", 10)
	if len(ids) != 0 || pages != 2 {
		t.Errorf("%d matches in %d pages, want none in 2", len(ids), pages)
	}
	ids, _ = e.queryAll(t, "/enrollments/query", fmt.Sprintf("SELECT * FROM enrollments WHERE registrationId = 'd%05d'", n-1), 10)
	if len(ids) != 1 {
		t.Errorf("the last one: %v", ids)
	}
}
