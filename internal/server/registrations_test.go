package server

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// seedRegistrations stores n registrations: even ones in group "even" on
// hub-a and assigned, odd ones individual on hub-b and failed.
func seedRegistrations(t *testing.T, n int) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for i := range n {
		r := &enroll.Registration{State: dps.DeviceRegistrationState{RegistrationID: fmt.Sprintf("dev-%03d", i), Status: "failed", AssignedHub: "hub-b"}}
		if i%2 == 0 {
			r.EnrollmentGroupID = "even"
			r.State.Status, r.State.AssignedHub = "assigned", "HUB-A"
		}
		if _, err := enroll.PutRegistration(t.Context(), st, r, store.Condition{}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestListRegistrations(t *testing.T) {
	st := seedRegistrations(t, 25)
	tests := []struct {
		name                string
		group, hub, status  string
		limit               int
		wantFirst, wantLast string
		wantN               int
	}{
		{"all, first page", "", "", "", 10, "dev-000", "dev-009", 10},
		{"by group", "even", "", "", 100, "dev-000", "dev-024", 13},
		{"by hub, any case", "", "hub-a", "", 100, "dev-000", "dev-024", 13},
		{"by status", "", "", "failed", 100, "dev-001", "dev-023", 12},
		{"filters together", "even", "", "failed", 100, "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page, err := listRegistrations(t.Context(), st, tt.group, tt.hub, tt.status, "", tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Items) != tt.wantN {
				t.Fatalf("%d items, want %d", len(page.Items), tt.wantN)
			}
			if tt.wantN > 0 && (page.Items[0].RegistrationID != tt.wantFirst || page.Items[tt.wantN-1].RegistrationID != tt.wantLast) {
				t.Errorf("items %s..%s, want %s..%s", page.Items[0].RegistrationID, page.Items[tt.wantN-1].RegistrationID, tt.wantFirst, tt.wantLast)
			}
		})
	}

	// Paging by the continuation visits every match once.
	var seen []string
	after := ""
	for range 20 {
		page, err := listRegistrations(t.Context(), st, "", "", "failed", after, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Items {
			seen = append(seen, r.RegistrationID)
			if got := page.Groups[r.RegistrationID]; got != "" {
				t.Errorf("%s: group %q for an individual enrollment", r.RegistrationID, got)
			}
		}
		if page.Continuation == "" {
			break
		}
		after = page.Continuation
	}
	if len(seen) != 12 || !slices.IsSorted(seen) || len(slices.Compact(slices.Clone(seen))) != 12 {
		t.Errorf("paged through %v, want the 12 failed registrations once each", seen)
	}
	page, _ := listRegistrations(t.Context(), st, "even", "", "", "", 1)
	if page.Groups["dev-000"] != "even" {
		t.Errorf("groups %v, want dev-000 in even", page.Groups)
	}
}

func TestComputeStats(t *testing.T) {
	st := seedRegistrations(t, 7)
	stats, err := computeStats(t.Context(), st, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if stats.Registrations != 7 || stats.ByStatus["assigned"] != 4 || stats.ByStatus["failed"] != 3 {
		t.Errorf("stats %+v, want 7 registrations: 4 assigned, 3 failed", stats)
	}
	if len(stats.PerMinute) != 60 || stats.PerMinute[59] != 7 {
		t.Errorf("per minute %v, want all 7 in the current minute", stats.PerMinute)
	}
	// An hour later they are out of the chart.
	stats, err = computeStats(t.Context(), st, time.Now().Add(time.Hour+time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Max(stats.PerMinute) != 0 {
		t.Errorf("per minute an hour later %v, want zeros", stats.PerMinute)
	}
}
