package refusal

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
)

func TestReason(t *testing.T) {
	answer := dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"because", Because(answer, "wrong key for %q", "dev"), `wrong key for "dev"`},
		{"wrapped because", fmt.Errorf("attest: %w", Because(answer, "expired")), "expired"},
		{"dps error", dps.Errorf(dps.CodeThrottled, "Too many requests."), "Too many requests."},
		{"other", fmt.Errorf("disk on fire"), "disk on fire"},
		{"nil", nil, ""},
	}
	for _, tc := range tests {
		if got := Reason(tc.err); got != tc.want {
			t.Errorf("%s: Reason = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestLogKeepsTheLatest(t *testing.T) {
	var buf bytes.Buffer
	l := New(Options{Size: 3, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	for i := range 5 {
		a := dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
		a.TrackingID = fmt.Sprintf("t%d", i)
		l.Record(context.Background(), Request{Transport: "https", RegistrationID: fmt.Sprintf("dev%d", i%2)}, a,
			Because(a, "reason %d", i))
	}
	if n := strings.Count(buf.String(), "level=INFO msg=\"device request refused\""); n != 5 {
		t.Errorf("%d info lines, want 5:\n%s", n, buf.String())
	}
	ids := func(registrationID, trackingID string, limit int) string {
		var s []string
		found, err := l.Find(context.Background(), registrationID, trackingID, limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range found {
			s = append(s, r.TrackingID)
		}
		return strings.Join(s, ",")
	}
	tests := []struct {
		regID, trackingID string
		limit             int
		want              string
	}{
		{"", "", 0, "t4,t3,t2"}, // the oldest two are gone
		{"DEV0", "", 0, "t4,t2"},
		{"dev1", "", 0, "t3"},
		{"", "t3", 0, "t3"},
		{"", "t0", 0, ""},
		{"", "", 2, "t4,t3"},
	}
	for _, tc := range tests {
		if got := ids(tc.regID, tc.trackingID, tc.limit); got != tc.want {
			t.Errorf("Find(%q, %q, %d) = %s, want %s", tc.regID, tc.trackingID, tc.limit, got, tc.want)
		}
	}

	// A failure on dpsd's side is an error line, and device-chosen text
	// is bounded.
	buf.Reset()
	a := dps.Errorf(dps.CodeInternal, "Internal server error.")
	l.Record(context.Background(), Request{RegistrationID: strings.Repeat("é", 1000)}, a, fmt.Errorf("boom"))
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("5xx logged as %s", buf.String())
	}
	if r := mustFind(t, l)[0]; len(r.RegistrationID) > maxField+len("…") {
		t.Errorf("registration id kept at %d bytes", len(r.RegistrationID))
	}
}

func mustFind(t *testing.T, l *Log) []admin.Refusal {
	t.Helper()
	found, err := l.Find(context.Background(), "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	return found
}
