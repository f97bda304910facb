package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Delays of the webhook test server. retryDelay makes the first answer of a
// retried row come after dpsd's register wait (2 s), so the device is told
// "assigning" before the retry succeeds; slowDelay is the slow row.
const (
	retryDelay = 2500 * time.Millisecond
	slowDelay  = 4 * time.Second
)

// outcomeWebhook is the custom allocation webhook of the outcome table
// tests: one path per row of spec/README.md's table. Every answer that
// assigns names the first hub the request offers.
type outcomeWebhook struct {
	// URL is the base URL; a row's webhook is URL + path.
	URL string
	// Unreachable is a base URL where nothing listens until a test asks
	// for it with POST URL/control/open-unreachable.
	Unreachable string

	unreachableAddr string

	mu    sync.Mutex
	calls map[string]map[string]int // path → registration id → calls
	extra []*http.Server
}

// Paths of the rows.
const (
	pathOK             = "/ok"
	pathUnauthorized   = "/unauthorized"
	pathEmptyHub       = "/empty-hub"
	pathNullHub        = "/null-hub"
	pathBadRequest     = "/bad-request"
	pathThrottleThenOK = "/throttle-then-ok"
	pathErrorThenOK    = "/error-then-ok"
	pathSlow           = "/slow"
	pathDisabled       = "/disabled" // must never be called
	pathControlOpen    = "/control/open-unreachable"
)

// startOutcomeWebhook starts the webhook on 127.0.6.x and reserves a second
// address for the unreachable row. Both stop when the test ends.
func startOutcomeWebhook(t *testing.T, prefix string) *outcomeWebhook {
	t.Helper()
	w := &outcomeWebhook{calls: map[string]map[string]int{}}
	addr := pickSideAddressIn(t, prefix, "8091")
	w.unreachableAddr = pickSideAddressIn(t, prefix, "8092")
	w.URL = "http://" + addr
	w.Unreachable = "http://" + w.unreachableAddr
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	w.serve(t, l)
	return w
}

func (w *outcomeWebhook) serve(t *testing.T, l net.Listener) {
	srv := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second}
	w.mu.Lock()
	w.extra = append(w.extra, srv)
	w.mu.Unlock()
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
}

// callCount is how often a row's webhook was called for a device.
func (w *outcomeWebhook) callCount(path, regID string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls[path][regID]
}

func (w *outcomeWebhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path == pathControlOpen {
		w.openUnreachable(rw)
		return
	}
	var req struct {
		Runtime struct {
			RegistrationID string `json:"registrationId"`
		} `json:"deviceRuntimeContext"`
		LinkedHubs []string `json:"linkedHubs"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err := json.Unmarshal(body, &req); err != nil || r.Method != http.MethodPost {
		http.Error(rw, "not an allocation request", http.StatusBadRequest)
		return
	}
	regID := req.Runtime.RegistrationID
	w.mu.Lock()
	if w.calls[r.URL.Path] == nil {
		w.calls[r.URL.Path] = map[string]int{}
	}
	w.calls[r.URL.Path][regID]++
	n := w.calls[r.URL.Path][regID]
	w.mu.Unlock()

	hub := ""
	if len(req.LinkedHubs) > 0 {
		hub = req.LinkedHubs[0]
	}
	assign := func() {
		rw.Header().Set("Content-Type", "application/json")
		json.NewEncoder(rw).Encode(map[string]any{
			"iotHubHostName": hub,
			"initialTwin":    map[string]any{"tags": map[string]string{"row": r.URL.Path}, "properties": map[string]any{"desired": map[string]any{}}},
			"payload":        map[string]any{"answeredOnCall": n},
		})
	}
	// wait sleeps d unless dpsd gives up on the request first.
	wait := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
	switch r.URL.Path {
	case pathOK, pathDisabled:
		assign()
	case pathUnauthorized:
		http.Error(rw, "Unauthorized.", http.StatusUnauthorized)
	case pathEmptyHub:
		rw.Header().Set("Content-Type", "application/json")
		io.WriteString(rw, `{"iotHubHostName":""}`)
	case pathNullHub:
		rw.Header().Set("Content-Type", "application/json")
		io.WriteString(rw, `{"iotHubHostName":null}`)
	case pathBadRequest:
		http.Error(rw, "Not a device of ours.", http.StatusBadRequest)
	case pathThrottleThenOK, pathErrorThenOK:
		if n == 1 {
			wait(retryDelay)
			status := http.StatusTooManyRequests
			if r.URL.Path == pathErrorThenOK {
				status = http.StatusInternalServerError
			}
			http.Error(rw, "Try again later.", status)
			return
		}
		assign()
	case pathSlow:
		wait(slowDelay)
		assign()
	default:
		http.NotFound(rw, r)
	}
}

// openUnreachable starts listening on the address of the unreachable row,
// so that the registration left retrying finishes (dpsd waits for running
// registrations when it shuts down).
func (w *outcomeWebhook) openUnreachable(rw http.ResponseWriter) {
	l, err := net.Listen("tcp", w.unreachableAddr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			rw.WriteHeader(http.StatusNoContent) // opened before
			return
		}
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	srv := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second}
	w.mu.Lock()
	w.extra = append(w.extra, srv)
	w.mu.Unlock()
	go srv.Serve(l)
	rw.WriteHeader(http.StatusNoContent)
}

// close stops every listener (the cleanup of serve covers the first).
func (w *outcomeWebhook) close() {
	w.mu.Lock()
	servers := append([]*http.Server(nil), w.extra...)
	w.mu.Unlock()
	for _, s := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.Shutdown(ctx)
		cancel()
	}
}

// TestCustomAllocationOutcomes covers spec/README.md's outcome table, one
// node test per row (outcomes.test.js), against a real webhook server run
// here: the registration status and error code through the service SDK,
// what the Node device SDK reports (device-protocol.md §9), and the
// allocation log. Afterwards it checks how often each row's webhook was
// called: retried rows twice, the others once, a disabled enrollment never.
func TestCustomAllocationOutcomes(t *testing.T) {
	t.Parallel()
	runOutcomes(t, "127.0.3", "127.0.6", []string{"http", "mqtt"})
}

// TestCustomAllocationOutcomesAMQP is TestCustomAllocationOutcomes over
// AMQP and AMQP over WebSockets.
func TestCustomAllocationOutcomesAMQP(t *testing.T) {
	t.Parallel()
	runOutcomes(t, amqpPrefix, amqpPrefix, []string{"amqp", "amqpws"})
}

// runOutcomes runs outcomes.test.js with the transports given against a
// server in prefix and a webhook in sidePrefix.
func runOutcomes(t *testing.T, prefix, sidePrefix string, transports []string) {
	nodeTool(t)
	srv := startServerIn(t, prefix)
	wh := startOutcomeWebhook(t, sidePrefix)
	// Stop the webhook's listeners after dpsd (cleanups run last first).
	t.Cleanup(wh.close)

	var ids map[string][]string // path → registration ids used (written by node)
	idsFile := filepath.Join(srv.DataDir, "outcome-ids.json")
	runNodeTests(t, withNodeData(t, srv, "outcomes", map[string]any{
		"webhook":     wh.URL,
		"unreachable": wh.Unreachable,
		"hub":         srv.Hub,
		"idsFile":     idsFile,
		"transports":  transports,
		"paths": map[string]string{
			"ok": pathOK, "unauthorized": pathUnauthorized, "emptyHub": pathEmptyHub, "nullHub": pathNullHub,
			"badRequest": pathBadRequest, "throttleThenOK": pathThrottleThenOK, "errorThenOK": pathErrorThenOK,
			"slow": pathSlow, "disabled": pathDisabled, "controlOpen": pathControlOpen,
		},
	}), "outcomes.test.js")

	t.Run("the webhook was called as the table says", func(t *testing.T) {
		data, err := os.ReadFile(idsFile)
		if err != nil {
			t.Fatalf("node wrote no registration ids: %v", err)
		}
		if err := json.Unmarshal(data, &ids); err != nil {
			t.Fatal(err)
		}
		want := map[string]int{
			pathUnauthorized: 1, pathEmptyHub: 1, pathNullHub: 1, pathBadRequest: 1, pathSlow: 1,
			pathThrottleThenOK: 2, pathErrorThenOK: 2, pathDisabled: 0,
		}
		for path, n := range want {
			if len(ids[path]) == 0 {
				t.Errorf("%s: node used no device for this row", path)
			}
			for _, id := range ids[path] {
				if got := wh.callCount(path, id); got != n {
					t.Errorf("%s: webhook called %d times for %s, want %d", path, got, id, n)
				}
			}
		}
	})
}
