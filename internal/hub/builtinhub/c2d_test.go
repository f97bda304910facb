package builtinhub_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
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
