package alloclog

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

var quiet = slog.New(slog.DiscardHandler)

func newLog(t *testing.T) (*Log, store.Store) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return New(st, Options{Now: func() time.Time { now = now.Add(time.Second); return now }, Logger: quiet}), st
}

func TestRecorderLifecycle(t *testing.T) {
	ctx := t.Context()
	l, _ := newLog(t)
	rec := l.Begin(ctx, "Dev-1", "https://hook.example/a?****", []byte(`{"linkedHubs":["h"]}`))

	// In progress from the start, and with its attempts while it waits to
	// retry: visible to readers already.
	list, err := l.List(ctx, "dev-1")
	if err != nil || len(list) != 1 || list[0].Outcome != OutcomeInProgress || len(list[0].Attempts) != 0 {
		t.Fatalf("begun: %+v, %v", list, err)
	}
	rec.Attempt(ctx, Attempt{Started: time.Now(), Status: 503, Body: json.RawMessage(`{"e":1}`), DurationMs: 12})
	rec.Waiting(ctx, time.Second)
	list, err = l.List(ctx, "dev-1")
	if err != nil || len(list) != 1 || list[0].Outcome != OutcomeInProgress || len(list[0].Attempts) != 1 || list[0].Attempts[0].RetryAfterMs != 1000 {
		t.Fatalf("in progress: %+v, %v", list, err)
	}

	rec.Attempt(ctx, Attempt{Status: 200, DurationMs: 3})
	rec.Finish(ctx, "h", 0, "")
	list, _ = l.List(ctx, "DEV-1")
	e := list[0]
	if e.Outcome != OutcomeAssigned || e.Hub != "h" || e.Retries != 1 || len(e.Attempts) != 2 || e.DurationMs <= 0 || string(e.Request) != `{"linkedHubs":["h"]}` {
		t.Errorf("finished entry = %+v", e)
	}

	fail := l.Begin(ctx, "dev-1", "u", nil)
	fail.Finish(ctx, "", dps.CodeCustomAllocationUnauthorizedAccess, "no")
	list, _ = l.List(ctx, "dev-1")
	if len(list) != 2 || list[1].Outcome != OutcomeFailed || list[1].ErrorCode != 400209 || list[1].ID == list[0].ID {
		t.Errorf("after failure: %+v", list)
	}

	var nilRec *Recorder
	nilRec.Attempt(ctx, Attempt{})
	nilRec.Finish(ctx, "h", 0, "")
	if nilRec.ID() != "" {
		t.Error("nil recorder has an id")
	}

	if err := l.Delete(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if list, err := l.List(ctx, "dev-1"); err != nil || len(list) != 0 {
		t.Errorf("after delete: %v, %v", list, err)
	}
	if err := l.Delete(ctx, "dev-1"); err != nil {
		t.Errorf("deleting a missing log: %v", err)
	}
}

func TestBounds(t *testing.T) {
	ctx := t.Context()
	tests := []struct {
		name       string
		allocs     int
		requestLen int
		bodyLen    int
		wantMax    int
	}{
		{name: "entry count", allocs: MaxEntries + 7, requestLen: 10, bodyLen: 10, wantMax: MaxEntries},
		// Each entry holds about 8 KiB of request and 11 × 2 KiB of bodies.
		{name: "record size", allocs: 15, requestLen: 60 << 10, bodyLen: 10 << 10, wantMax: MaxRecordBytes / (30 << 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, st := newLog(t)
			for i := range tt.allocs {
				big := fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", tt.requestLen))
				rec := l.Begin(ctx, "dev", "u", []byte(big))
				for range 11 {
					rec.Attempt(ctx, Attempt{Status: 500, Body: mustClip(strings.Repeat("y", tt.bodyLen))})
				}
				rec.Waiting(ctx, time.Second)
				rec.Finish(ctx, "", 400207, "failed")
			}
			list, err := l.List(ctx, "dev")
			if err != nil {
				t.Fatal(err)
			}
			if len(list) == 0 || len(list) > tt.wantMax {
				t.Errorf("%d entries kept; want 1..%d", len(list), tt.wantMax)
			}
			// The newest allocation is always the last entry.
			var last struct{ N int }
			if list[len(list)-1].RequestTruncated {
				if !strings.Contains(string(list[len(list)-1].Request), fmt.Sprintf(`\"n\":%d,`, tt.allocs-1)) {
					t.Errorf("last entry is not the newest: %.80s", list[len(list)-1].Request)
				}
			} else if err := json.Unmarshal(list[len(list)-1].Request, &last); err != nil || last.N != tt.allocs-1 {
				t.Errorf("last entry n = %d, %v; want %d", last.N, err, tt.allocs-1)
			}
			rec, err := st.Get(ctx, Kind, "dev")
			if err != nil || len(rec.Data) > MaxRecordBytes {
				t.Errorf("record is %d bytes; want at most %d (%v)", len(rec.Data), MaxRecordBytes, err)
			}
		})
	}
}

func mustClip(s string) json.RawMessage {
	v, _ := Clip([]byte(s), MaxBodyBytes)
	return v
}

func TestClip(t *testing.T) {
	tests := []struct {
		name          string
		in            string
		max           int
		want          string
		wantTruncated bool
	}{
		{name: "empty", in: "", max: 10, want: ""},
		{name: "json kept", in: `{"a":1}`, max: 10, want: `{"a":1}`},
		{name: "text quoted", in: `Unrecognized device registration.`, max: 100, want: `"Unrecognized device registration."`},
		{name: "long json cut", in: `{"a":"0123456789"}`, max: 8, want: `"{\"a\":\"01"`, wantTruncated: true},
		{name: "utf-8 boundary", in: "ééé", max: 3, want: `"é"`, wantTruncated: true},
	}
	for _, tt := range tests {
		got, tr := Clip([]byte(tt.in), tt.max)
		if string(got) != tt.want || tr != tt.wantTruncated {
			t.Errorf("%s: Clip = %s, %v; want %s, %v", tt.name, got, tr, tt.want, tt.wantTruncated)
		}
		if len(got) > 0 && !json.Valid(got) {
			t.Errorf("%s: %s is not valid JSON", tt.name, got)
		}
	}
}

func TestHandler(t *testing.T) {
	ctx := t.Context()
	l, _ := newLog(t)
	rec := l.Begin(ctx, "dev/1", "https://hook.example/?****", []byte(`{}`))
	rec.Attempt(ctx, Attempt{Status: 200})
	rec.Finish(ctx, "hub.example", 0, "")

	h := l.Handler(HandlerOptions{Logger: quiet, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") == "" {
			return dps.Errorf(dps.CodeUnauthorized, "no token")
		}
		return nil
	}})
	mux := http.NewServeMux()
	mux.Handle("/dpsd/registrations/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	tests := []struct {
		name, method, path, auth string
		wantStatus               int
		wantEntries              int
	}{
		{"unauthorized", "GET", "/dpsd/registrations/dev%2F1/allocationLog", "", 401, -1},
		{"found", "GET", "/dpsd/registrations/dev%2F1/allocationLog", "t", 200, 1},
		{"any case", "GET", "/dpsd/registrations/DEV%2F1/allocationlog", "t", 200, 1},
		{"no log", "GET", "/dpsd/registrations/other/allocationLog", "t", 200, 0},
		{"bad path", "GET", "/dpsd/registrations/dev/other", "t", 404, -1},
		{"bad method", "DELETE", "/dpsd/registrations/dev%2F1/allocationLog", "t", 405, -1},
	}
	for _, tt := range tests {
		req, _ := http.NewRequestWithContext(ctx, tt.method, srv.URL+tt.path, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("%s: status %d; want %d (%s)", tt.name, resp.StatusCode, tt.wantStatus, body)
			continue
		}
		if tt.wantEntries < 0 {
			var e dps.Error
			if err := json.Unmarshal(body, &e); err != nil || e.ErrorCode != tt.wantStatus*1000 {
				t.Errorf("%s: error body %s", tt.name, body)
			}
			continue
		}
		var r Response
		if err := json.Unmarshal(body, &r); err != nil || len(r.Entries) != tt.wantEntries || r.Entries == nil {
			t.Errorf("%s: body %s; want %d entries", tt.name, body, tt.wantEntries)
		}
	}
}
