package builtinhub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/store"
)

// failingStore fails Get with the error in fail, when set.
type failingStore struct {
	store.Store
	fail atomic.Pointer[error]
}

func (s *failingStore) Get(ctx context.Context, kind store.Kind, id string) (store.Record, error) {
	if err := s.fail.Load(); err != nil {
		return store.Record{}, *err
	}
	return s.Store.Get(ctx, kind, id)
}

// syncBuffer is a bytes.Buffer that the hub's goroutines can log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestStoreErrorsHidden checks that a storage failure's text reaches the
// log with a tracking id, and clients only a fixed message with that id.
func TestStoreErrorsHidden(t *testing.T) {
	var logs syncBuffer
	e := newEnv(t, func(o *builtinhub.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	fs := &failingStore{Store: e.st}
	e.st = fs
	e.restart()
	h := e.createHub("storeerr-hub", "127.0.0.41")
	createDevice(t, h, "d1")
	rc := newRESTClient(t, e, h, "iothubowner")
	admin := e.m.Handler()

	const secret = "secret table dpsd_records is locked"
	for _, tt := range []struct {
		name       string
		err        error
		status     int
		retryAfter string
	}{
		{name: "unavailable", err: fmt.Errorf("get: %s: %w", secret, store.ErrUnavailable), status: http.StatusServiceUnavailable},
		{name: "other", err: errors.New(secret), status: http.StatusInternalServerError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs.fail.Store(&tt.err)
			defer fs.fail.Store(nil)

			// The hub REST API, in the hub's error shape.
			r := rc.do(http.MethodGet, "/devices/d1", "", "")
			if r.status != tt.status {
				t.Fatalf("REST status = %d (%s), want %d", r.status, r.raw, tt.status)
			}
			if tt.status == http.StatusServiceUnavailable && r.header.Get("Retry-After") == "" {
				t.Errorf("REST 503 without Retry-After")
			}
			if strings.Contains(r.raw, "secret") {
				t.Errorf("REST body %s leaks the store's error", r.raw)
			}
			reqID := r.header.Get("x-ms-request-id")
			if reqID == "" || !strings.Contains(r.raw, reqID) {
				t.Errorf("REST body %s lacks the request id %q", r.raw, reqID)
			}
			if !strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), reqID) {
				t.Errorf("log %q lacks the store's error with request id %s", logs.String(), reqID)
			}

			// The admin API, in the DPS error shape.
			w := httptest.NewRecorder()
			admin.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/dpsd/hubs/storeerr-hub/devices/d1", nil))
			if w.Code != tt.status {
				t.Fatalf("admin status = %d (%s), want %d", w.Code, w.Body, tt.status)
			}
			if tt.status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
				t.Errorf("admin 503 without Retry-After")
			}
			var de dps.Error
			if err := json.Unmarshal(w.Body.Bytes(), &de); err != nil {
				t.Fatalf("admin body %q: %v", w.Body, err)
			}
			if strings.Contains(de.Message, "secret") || de.TrackingID == "" {
				t.Errorf("admin body %+v leaks the store's error or lacks a tracking id", de)
			}
			if !strings.Contains(logs.String(), de.TrackingID) {
				t.Errorf("log %q lacks the admin tracking id %s", logs.String(), de.TrackingID)
			}
		})
	}
}
