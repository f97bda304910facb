package allocate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

const (
	hubA = "contoso-toasters-hub-1098.azure-devices.net"
	hubB = "contoso-heatpumps-hub-1098.azure-devices.net"
	hubC = "contoso-spare-hub-1098.azure-devices.net"
	// groupKey must never reach a webhook.
	groupKey     = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="
	secondaryKey = "c2Vjb25kYXJ5LWtleS1mb3ItdGVzdHMtb25seS1ub3QtcmVhbA=="
	functionCode = "s3cr3t-function-key"
)

var quiet = slog.New(slog.DiscardHandler)

// hubList is a fixed set of linked hubs.
type hubList []*linkedhub.Hub

func (l hubList) List(context.Context) ([]*linkedhub.Hub, error) { return l, nil }

func hub(name string, weight int, apply bool, location string) *linkedhub.Hub {
	return &linkedhub.Hub{Name: name, AllocationWeight: weight, ApplyAllocationPolicy: apply, Location: location}
}

// fakeClock replaces the webhook's clock and sleeper: sleeping advances the
// clock at once and is recorded, so retry schedules are checked without
// waiting.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// webhookServer is a real HTTP webhook on 127.0.0.1 that answers with a
// script and records what it received.
type webhookServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []seenRequest
	answer   func(n int, r *http.Request) (status int, body string)
}

type seenRequest struct {
	method, path, rawQuery, contentType string
	body                                []byte
}

func newWebhookServer(t *testing.T, answer func(n int, r *http.Request) (int, string)) *webhookServer {
	t.Helper()
	ws := &webhookServer{answer: answer}
	ws.Server = httptest.NewServer(http.HandlerFunc(ws.serve))
	t.Cleanup(ws.Close)
	return ws
}

func (ws *webhookServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body)) // for answer to read again
	ws.mu.Lock()
	n := len(ws.requests)
	ws.requests = append(ws.requests, seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), body})
	ws.mu.Unlock()
	status, answer := ws.answer(n, r)
	if status == 0 {
		return // the handler already answered
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, answer)
}

func (ws *webhookServer) seen() []seenRequest {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return append([]seenRequest(nil), ws.requests...)
}

// hookURL is the webhook URL an enrollment names, with an Azure Functions
// style key in its query string.
func (ws *webhookServer) hookURL() string { return ws.URL + "/api/allocate?code=" + functionCode }

// always answers every call the same.
func always(status int, body string) func(int, *http.Request) (int, string) {
	return func(int, *http.Request) (int, string) { return status, body }
}

// customGroup is the tutorial's enrollment group, with keys.
func customGroup(webhookURL string, hubs ...string) *dps.EnrollmentGroup {
	return &dps.EnrollmentGroup{
		EnrollmentGroupID: "contoso-custom-allocated-devices",
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey,
			SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: groupKey, SecondaryKey: secondaryKey}},
		ProvisioningStatus:         dps.ProvisioningEnabled,
		AllocationPolicy:           dps.AllocationCustom,
		IoTHubs:                    hubs,
		ReprovisionPolicy:          &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true},
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: webhookURL, APIVersion: "2021-10-01"},
		ETag:                       `"etag-1"`,
	}
}

func groupInput(regID string, g *dps.EnrollmentGroup) *provision.AllocationInput {
	return &provision.AllocationInput{
		RegistrationID:  regID,
		Group:           g,
		AttestationType: dps.AttestationSymmetricKey,
		RemoteAddr:      "127.0.0.1:50000",
	}
}

type testSetup struct {
	alloc *Allocator
	clock *fakeClock
	audit *alloclog.Log
	st    store.Store
}

// newTestAllocator builds an allocator over hubs whose webhook uses a fake
// clock and records to a real store.
func newTestAllocator(t testing.TB, hubs hubList, mod func(*WebhookOptions)) *testSetup {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	clock := newFakeClock()
	log := alloclog.New(st, alloclog.Options{Now: clock.Now, Logger: quiet})
	opt := WebhookOptions{Sleep: clock.Sleep, Now: clock.Now, Audit: log, Logger: quiet}
	if mod != nil {
		mod(&opt)
	}
	wh, err := NewWebhook(opt)
	if err != nil {
		t.Fatalf("NewWebhook: %v", err)
	}
	a, err := New(Options{Hubs: hubs, Webhook: wh, Logger: quiet})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testSetup{alloc: a, clock: clock, audit: log, st: st}
}

func errCode(err error) int {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return 0
}

func seconds(s ...int) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		out[i] = time.Duration(v) * time.Second
	}
	return out
}
