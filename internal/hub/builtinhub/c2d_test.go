package builtinhub_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/store"
)

func TestC2DOverMQTT(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-mqtt", "127.0.10.40")
	createDevice(t, h, "dev1")
	host := h.Config().HostName

	// Queued while the device is away, delivered when it subscribes.
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{MessageID: "early", Body: []byte("first"), Properties: map[string]string{"k": "v w"}}); err != nil {
		t.Fatal(err)
	}
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	m := dc.next(t, "devices/dev1/messages/devicebound/")
	bag, _ := url.ParseQuery(strings.TrimPrefix(m.Topic(), "devices/dev1/messages/devicebound/"))
	if string(m.Payload()) != "first" || bag.Get("$.mid") != "early" || bag.Get("k") != "v w" || bag.Get("$.to") != "/devices/dev1/messages/deviceBound" {
		t.Fatalf("C2D message %s %q", m.Topic(), m.Payload())
	}
	// Sent while connected: delivered at once.
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{Body: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	if m := dc.next(t, "devices/dev1/messages/devicebound/"); string(m.Payload()) != "second" {
		t.Fatalf("second C2D message %q", m.Payload())
	}
}

func TestC2DBounds(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-bounds", "127.0.10.41")
	createDevice(t, h, "dev1")
	ctx := context.Background()
	for i := range builtinhub.MaxC2DQueue {
		if err := h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: []byte("x")}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	err := h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: []byte("x")})
	if !hubErrorIs(err, http.StatusForbidden, "DeviceMaximumQueueDepthExceeded") {
		t.Errorf("message over the queue depth: %v", err)
	}
	err = h.SendC2D(ctx, "dev2", &builtinhub.C2DMessage{Body: []byte("x")})
	if !hubErrorIs(err, http.StatusNotFound, "") {
		t.Errorf("message to a device that does not exist: %v", err)
	}
	err = h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: make([]byte, builtinhub.MaxC2DBody+1)})
	if !hubErrorIs(err, http.StatusRequestEntityTooLarge, "") {
		t.Errorf("message over the size limit: %v", err)
	}
}

func hubErrorIs(err error, status int, code string) bool {
	var he *azurehub.Error
	return errors.As(err, &he) && he.StatusCode == status && (code == "" || he.Code == code)
}

// TestC2DSurvivesRestart: waiting messages are kept in the store; a
// device that comes back after a restart gets them, once.
func TestC2DSurvivesRestart(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-restart", "127.0.10.43")
	createDevice(t, h, "dev1")
	for _, body := range []string{"one", "two"} {
		if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{MessageID: body, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	e.restart()
	h = e.hub("c2d-restart")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	for _, want := range []string{"one", "two"} {
		if m := dc.next(t, "devices/dev1/messages/devicebound/"); string(m.Payload()) != want {
			t.Fatalf("after a restart got %q, want %q", m.Payload(), want)
		}
	}
	// Acknowledged (PUBACK): nothing is left for the next start.
	waitC2DStored(t, e, "c2d-restart", 0)
	dc.Disconnect(100)
	e.restart()
	h = e.hub("c2d-restart")
	dc, _, err = dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	select {
	case m := <-dc.msgs:
		t.Fatalf("a delivered message came again after a restart: %s %q", m.Topic(), m.Payload())
	case <-time.After(300 * time.Millisecond):
	}
	// Deleting the device drops its stored queue.
	dc.Disconnect(100)
	for range 50 { // until the hub has seen the disconnection
		if d, _ := h.GetDevice(context.Background(), "dev1"); d != nil && d.ConnectionState == azurehub.Disconnected {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{Body: []byte("three")}); err != nil {
		t.Fatal(err)
	}
	if recs, _, _ := e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: "c2d-restart"}); len(recs) != 1 {
		t.Fatalf("stored queues %d, want the waiting message's", len(recs))
	}
	if err := h.DeleteDevice(context.Background(), "dev1", ""); err != nil {
		t.Fatal(err)
	}
	if recs, _, _ := e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: "c2d-restart"}); len(recs) != 0 {
		t.Errorf("a deleted device's queue is still stored: %d records", len(recs))
	}
}

// waitC2DStored waits until hub has n stored cloud-to-device queues.
func waitC2DStored(t *testing.T, e *env, hub string, n int) {
	t.Helper()
	var recs []store.Record
	for range 250 {
		recs, _, _ = e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: hub})
		if len(recs) == n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("stored cloud-to-device queues of %s: %d, want %d", hub, len(recs), n)
}
