package builtinhub_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
)

func TestMQTTDeviceFlow(t *testing.T) {
	for _, scheme := range []string{"ssl", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			addr := map[string]string{"ssl": "127.0.0.25", "wss": "127.0.0.26"}[scheme]
			e := newEnv(t, nil)
			h := e.createHub("flow-hub", addr)
			host := h.Config().HostName
			createDevice(t, h, "dev1")
			ctx := context.Background()
			if _, err := h.UpdateTwin(ctx, "dev1", &azurehub.Twin{Tags: map[string]any{"deviceType": "toaster"},
				Properties: &azurehub.TwinProperties{Desired: map[string]any{"state": "ready"}}}, "*"); err != nil {
				t.Fatal(err)
			}

			dial := mqttAddr(h)
			if scheme == "wss" {
				dial = httpsAddr(h)
			}
			dc, present, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: dial, tlsName: host, scheme: scheme})
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			if present {
				t.Error("session present on first connect")
			}
			if d, _ := h.GetDevice(ctx, "dev1"); d.ConnectionState != azurehub.Connected {
				t.Errorf("connection state %q", d.ConnectionState)
			}

			// Twin GET: desired and reported with versions, no tags.
			dc.subscribe(t, "$iothub/twin/res/#", 0)
			dc.publish(t, "$iothub/twin/GET/?$rid=1", 0, " ")
			m := dc.next(t, "$iothub/twin/res/")
			if m.Topic() != "$iothub/twin/res/200/?$rid=1" {
				t.Fatalf("GET answered on %s", m.Topic())
			}
			var got map[string]map[string]any
			if err := json.Unmarshal(m.Payload(), &got); err != nil {
				t.Fatal(err)
			}
			if got["desired"]["state"] != "ready" || got["desired"]["$version"] != float64(2) || got["reported"]["$version"] != float64(1) {
				t.Fatalf("twin %s", m.Payload())
			}
			if _, ok := got["tags"]; ok {
				t.Fatal("device twin shows tags")
			}

			// Reported patch: 204 with the new reported version.
			dc.publish(t, "$iothub/twin/PATCH/properties/reported/?$rid=2", 0, `{"firmware":"1.2.3","status":{"ok":true}}`)
			m = dc.next(t, "$iothub/twin/res/")
			if m.Topic() != "$iothub/twin/res/204/?$rid=2&$version=2" || len(m.Payload()) != 0 {
				t.Fatalf("reported answered on %s: %q", m.Topic(), m.Payload())
			}
			tw, _ := h.GetTwin(ctx, "dev1")
			if tw.Properties.Reported["firmware"] != "1.2.3" {
				t.Fatalf("reported not stored: %+v", tw.Properties.Reported)
			}

			// A bad patch is answered with an errorCode body.
			dc.publish(t, "$iothub/twin/PATCH/properties/reported/?$rid=3", 0, `not json`)
			m = dc.next(t, "$iothub/twin/res/")
			if !strings.HasPrefix(m.Topic(), "$iothub/twin/res/400/?$rid=3") || !strings.Contains(string(m.Payload()), `"errorCode":400`) {
				t.Fatalf("bad patch answered %s %s", m.Topic(), m.Payload())
			}

			// Desired updates are pushed once subscribed.
			dc.subscribe(t, "$iothub/twin/PATCH/properties/desired/#", 0)
			if _, err := h.UpdateTwin(ctx, "dev1", &azurehub.Twin{Properties: &azurehub.TwinProperties{Desired: map[string]any{"state": "on"}}}, "*"); err != nil {
				t.Fatal(err)
			}
			m = dc.next(t, "$iothub/twin/PATCH/properties/desired/")
			if m.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=3" || string(m.Payload()) != `{"$version":3,"state":"on"}` {
				t.Fatalf("desired push %s %s", m.Topic(), m.Payload())
			}

			// Telemetry with a property bag.
			dc.publish(t, "devices/dev1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&alert=false", 1, `{"temp":21.5}`)
			msgs := h.Messages("dev1", 0, 0)
			if len(msgs) != 1 || msgs[0].Body != `{"temp":21.5}` || msgs[0].SystemProperties["messageId"] != "m-1" ||
				msgs[0].SystemProperties["contentType"] != "application/json" || msgs[0].Properties["alert"] != "false" {
				t.Fatalf("messages %+v", msgs)
			}

			// Method and C2D subscriptions are accepted.
			dc.subscribe(t, "$iothub/methods/POST/#", 0)
			dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
		})
	}
}

func TestMQTTRefusals(t *testing.T) {
	e := newEnv(t, nil)
	a := e.createHub("refuse-hub-a", "127.0.0.27")
	b := e.createHub("refuse-hub-b", "127.0.0.28")
	createDevice(t, a, "dev1")
	createDevice(t, b, "devb")
	ctx := context.Background()
	if _, err := a.CreateDevice(ctx, &azurehub.Device{DeviceID: "off", Status: azurehub.StatusDisabled,
		Authentication: &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: testKey1, SecondaryKey: testKey2}}}); err != nil {
		t.Fatal(err)
	}
	hostA, hostB := a.Config().HostName, b.Config().HostName
	wrongKey := "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="

	cases := []struct {
		name string
		id   string
		o    dialOpts
	}{
		{"wrong key", "dev1", dialOpts{host: hostA, key: wrongKey}},
		{"device of another hub", "devb", dialOpts{host: hostA}},
		{"other hub's host name", "dev1", dialOpts{host: hostB}},
		{"unknown device", "ghost", dialOpts{host: hostA}},
		{"disabled device", "off", dialOpts{host: hostA}},
		{"user name for another device", "dev1", dialOpts{host: hostA, username: hostA + "/devb/?api-version=2021-04-12"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.addr, tc.o.tlsName = mqttAddr(a), hostA
			if _, _, err := dialDevice(t, e, tc.id, tc.o); err == nil || !strings.Contains(err.Error(), "not Authorized") {
				t.Fatalf("connect: %v, want not authorized", err)
			}
		})
	}
	// The secondary key works.
	if _, _, err := dialDevice(t, e, "dev1", dialOpts{host: hostA, key: testKey2, addr: mqttAddr(a), tlsName: hostA}); err != nil {
		t.Fatalf("secondary key: %v", err)
	}
	// The hub's address works as host name, as with HostName=<ip>.
	if _, _, err := dialDevice(t, e, "dev1", dialOpts{host: a.Config().Address, addr: mqttAddr(a), tlsName: a.Config().Address}); err != nil {
		t.Fatalf("address as host name: %v", err)
	}
}

// TestPersistentSessionSurvivesRestart covers the Node SDK hazard of
// iothub-surface.md §2.5: after reconnecting with clean session off it
// never subscribes again, so the hub must keep its subscriptions, even
// across a restart of dpsd.
func TestPersistentSessionSurvivesRestart(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("session-hub", "127.0.0.29")
	host := h.Config().HostName
	createDevice(t, h, "dev1")

	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "$iothub/twin/PATCH/properties/desired/#", 0)
	dc.subscribe(t, "$iothub/twin/res/#", 0)
	dc.publish(t, "$iothub/twin/PATCH/properties/reported/?$rid=1", 0, `{"before":"restart"}`)
	// The patch is QoS 0: wait for the hub's answer before disconnecting, or
	// the disconnect may overtake it.
	dc.next(t, "$iothub/twin/res/204/")
	dc.Disconnect(100)

	// Reconnect without restart: session present, push arrives.
	dc, present, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host})
	if err != nil || !present {
		t.Fatalf("reconnect: present=%v err=%v", present, err)
	}
	dc.Disconnect(100)

	e.restart()
	h = e.hub("session-hub")
	tw, err := h.GetTwin(context.Background(), "dev1")
	if err != nil || tw.Properties.Reported["before"] != "restart" {
		t.Fatalf("twin after restart: %+v %v", tw, err)
	}

	dc, present, err = dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host})
	if err != nil {
		t.Fatal(err)
	}
	if !present {
		t.Error("session not present after restart")
	}
	// No SUBSCRIBE this time, like the Node SDK.
	if _, err := h.UpdateTwin(context.Background(), "dev1", &azurehub.Twin{Properties: &azurehub.TwinProperties{Desired: map[string]any{"x": 1}}}, "*"); err != nil {
		t.Fatal(err)
	}
	m := dc.next(t, "$iothub/twin/PATCH/properties/desired/")
	if !strings.Contains(string(m.Payload()), `"x":1`) {
		t.Fatalf("push %s", m.Payload())
	}
	dc.Disconnect(100)

	// A clean session drops what was kept.
	dc, present, err = dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil || present {
		t.Fatalf("clean connect: present=%v err=%v", present, err)
	}
	dc.Disconnect(100)
	if _, present, err = dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host}); err != nil || present {
		t.Fatalf("after clean session: present=%v err=%v", present, err)
	}
}

// TestMethodAnswersOnlyFromTheTarget checks that a device cannot answer a
// direct method sent to another device by guessing its request id.
func TestMethodAnswersOnlyFromTheTarget(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("method-hub", "127.0.0.30")
	host := h.Config().HostName
	createDevice(t, h, "target")
	createDevice(t, h, "intruder")
	target, _, err := dialDevice(t, e, "target", dialOpts{host: host, addr: mqttAddr(h), tlsName: host})
	if err != nil {
		t.Fatal(err)
	}
	target.subscribe(t, "$iothub/methods/POST/#", 0)
	intruder, _, err := dialDevice(t, e, "intruder", dialOpts{host: host, addr: mqttAddr(h), tlsName: host})
	if err != nil {
		t.Fatal(err)
	}

	type answer struct {
		res *builtinhub.MethodResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := h.InvokeMethod(context.Background(), "target", &builtinhub.MethodRequest{MethodName: "reboot", ResponseTimeoutInSeconds: 20})
		done <- answer{res, err}
	}()
	m := target.next(t, "$iothub/methods/POST/reboot/")
	_, query, _ := strings.Cut(m.Topic(), "?")
	// The intruder answers first, with the right request id. A twin GET
	// after it on the same connection is answered only once the broker has
	// handled the intruder's answer, since a connection's packets are
	// handled in order.
	intruder.subscribe(t, "$iothub/twin/res/#", 0)
	intruder.publish(t, "$iothub/methods/res/200/?"+query, 0, `{"from":"intruder"}`)
	intruder.publish(t, "$iothub/twin/GET/?$rid=sync", 0, " ")
	intruder.next(t, "$iothub/twin/res/")
	target.publish(t, "$iothub/methods/res/200/?"+query, 0, `{"from":"target"}`)
	a := <-done
	if a.err != nil || !strings.Contains(string(a.res.Payload), "target") {
		t.Fatalf("method answer = %+v, %v; want the target's", a.res, a.err)
	}
}
