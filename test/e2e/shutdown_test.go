package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/internal/testenv"
)

// webhookDelay is the slow webhook of the shutdown test: longer than the
// register's synchronous wait, so the device polls for the result.
const webhookDelay = 3500 * time.Millisecond

// TestShutdownWaitsForSlowWebhook: SIGTERM while a custom allocation
// waits on a slow webhook lets the webhook answer and the device's poll get
// the assignment, then dpsd exits.
func TestShutdownWaitsForSlowWebhook(t *testing.T) {
	srv := startServerIn(t, "127.0.12")

	// The webhook: assigns the first linked hub, after webhookDelay.
	called := make(chan struct{}, 1)
	var answered atomic.Bool
	l, err := net.Listen("tcp", net.JoinHostPort(srv.IP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	hook := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			LinkedHubs []string `json:"linkedHubs"`
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := json.Unmarshal(body, &req); err != nil || len(req.LinkedHubs) == 0 {
			http.Error(w, "not an allocation request", http.StatusBadRequest)
			return
		}
		select {
		case called <- struct{}{}:
		default:
		}
		select {
		case <-time.After(webhookDelay):
		case <-r.Context().Done():
			return // dpsd cut the call off
		}
		w.Header().Set("Content-Type", "application/json")
		if _, err := io.WriteString(w, `{"iotHubHostName":"`+req.LinkedHubs[0]+`"}`); err == nil {
			answered.Store(true)
		}
	})}
	go hook.Serve(l)
	t.Cleanup(func() { hook.Close() })

	var g dps.EnrollmentGroup
	decodeJSON(t, "group create", dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", "slow-webhook",
		"--allocation-policy", "custom", "--webhook-url", "http://"+l.Addr().String()+"/alloc", "-o", "json"), &g)

	roots := srv.roots(t)
	type result struct {
		st  *dps.DeviceRegistrationState
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st, err := device.Register(ctx, device.Config{
			ProvisioningHost: srv.IP,
			IDScope:          srv.Info.IDScope,
			RegistrationID:   "slow-webhook-device",
			GroupKey:         g.Attestation.SymmetricKey.PrimaryKey,
			Transport:        device.TransportHTTPS,
			RootCAs:          roots,
		})
		done <- result{st, err}
	}()

	select {
	case <-called:
	case r := <-done:
		t.Fatalf("the device finished before the webhook was called: %+v, %v", r.st, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the webhook was never called")
	}
	// SIGTERM to the node this test started, by its pid.
	if err := syscall.Kill(srv.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.st.Status != dps.StatusAssigned || r.st.AssignedHub != srv.Hub {
		t.Fatalf("device after SIGTERM during a %v webhook: %+v, %v; want assigned to %s", webhookDelay, r.st, r.err, srv.Hub)
	}
	if !answered.Load() {
		t.Error("the webhook's answer was not read")
	}
	select {
	case <-srv.Exited():
	case <-time.After(testenv.StopTimeout):
		t.Fatal("dpsd did not exit after the drained registration")
	}
	log := testenv.Tail(srv.LogPath, 400)
	if !strings.Contains(log, "dpsd draining") || strings.Contains(log, "shutdown grace over") {
		t.Errorf("log does not show a complete drain:\n%s", log)
	}
}

// TestDeletedHubIsUnlinked: deleting a built-in hub unlinks it, so
// allocation no longer sends devices to it, and what a device is told
// names no internal address.
func TestDeletedHubIsUnlinked(t *testing.T) {
	srv := startServerIn(t, "127.0.12")
	if out := dpsdCLI(t, srv, "linked-hub", "list", "--query", "[].name", "-o", "tsv"); strings.TrimSpace(out) != srv.Hub {
		t.Fatalf("linked hubs before: %q, want %s", out, srv.Hub)
	}
	dpsdCLI(t, srv, "hub", "delete", "e2e-hub")
	if out := dpsdCLI(t, srv, "linked-hub", "list", "--query", "[].name", "-o", "tsv"); strings.TrimSpace(out) != "" {
		t.Fatalf("linked hubs after the hub's delete: %q, want none", out)
	}

	var e dps.IndividualEnrollment
	decodeJSON(t, "enrollment create", dpsdCLI(t, srv, "enrollment", "create", "--registration-id", "after-delete", "-o", "json"), &e)
	roots := srv.roots(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := device.Register(ctx, device.Config{
		ProvisioningHost: srv.IP, IDScope: srv.Info.IDScope, RegistrationID: "after-delete",
		SymmetricKey: e.Attestation.SymmetricKey.PrimaryKey, RootCAs: roots,
	})
	var de *dps.Error
	if !errors.As(err, &de) || de.ErrorCode != dps.CodeNoHubForAllocation {
		t.Fatalf("register with the only hub deleted: %v, want %d", err, dps.CodeNoHubForAllocation)
	}
	if strings.Contains(de.Message, "127.") || strings.Contains(de.Message, "://") {
		t.Errorf("the device was told an internal address: %q", de.Message)
	}
}
