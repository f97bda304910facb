package builtinhub_test

import (
	"strings"
	"testing"
)

func TestModuleIdentitiesOverREST(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("module-hub", "127.0.19.14")
	c := newRESTClient(t, e, h, "iothubowner")
	createDevice(t, h, "dev1")

	r := c.do("PUT", "/devices/dev1/modules/filter", "", `{"deviceId":"dev1","moduleId":"filter","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`)
	if r.status != 200 || r.body["moduleId"] != "filter" || r.body["deviceId"] != "dev1" || r.body["etag"] == "" {
		t.Fatalf("create module: %d %s", r.status, r.raw)
	}
	key := r.body["authentication"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
	if key == "" {
		t.Fatalf("no generated key: %s", r.raw)
	}
	if r := c.do("PUT", "/devices/dev1/modules/second", "", `{"managedBy":"me"}`); r.status != 200 || r.body["managedBy"] != "me" {
		t.Fatalf("create second: %d %s", r.status, r.raw)
	}
	// A module of a similarly named device must not show up in dev1's list.
	createDevice(t, h, "dev1-x")
	if r := c.do("PUT", "/devices/dev1-x/modules/other", "", `{}`); r.status != 200 {
		t.Fatalf("create other: %d %s", r.status, r.raw)
	}
	r = c.do("GET", "/devices/dev1/modules", "", "")
	if r.status != 200 || strings.Count(r.raw, `"moduleId"`) != 2 || !strings.Contains(r.raw, `"filter"`) || !strings.Contains(r.raw, `"second"`) {
		t.Fatalf("list: %d %s", r.status, r.raw)
	}

	cases := []struct {
		name, method, path, ifMatch, body string
		status                            int
		code                              string
	}{
		{"create again", "PUT", "/devices/dev1/modules/filter", "", `{}`, 409, "ModuleAlreadyExistsOnDevice"},
		{"on a missing device", "PUT", "/devices/nodev/modules/m", "", `{}`, 404, "DeviceNotFound"},
		{"reserved id", "PUT", "/devices/dev1/modules/$edgeAgent", "", `{}`, 400, "ArgumentInvalid"},
		{"get missing", "GET", "/devices/dev1/modules/nope", "", "", 404, "ModuleNotFound"},
		{"twin missing", "GET", "/twins/dev1/modules/nope", "", "", 404, "ModuleNotFound"},
		{"update stale", "PUT", "/devices/dev1/modules/filter", `"stale"`, `{}`, 412, "PreconditionFailed"},
		{"ids differ", "PUT", "/devices/dev1/modules/filter", "", `{"moduleId":"other"}`, 400, "ArgumentInvalid"},
	}
	for _, tc := range cases {
		r := c.do(tc.method, tc.path, tc.ifMatch, tc.body)
		if r.status != tc.status || !strings.Contains(r.raw, "ErrorCode:"+tc.code+";") {
			t.Errorf("%s: %d %s", tc.name, r.status, r.raw)
		}
	}

	// Update keeps the keys when the client sends none (as Node does).
	r = c.do("PUT", "/devices/dev1/modules/filter", `"*"`, `{"deviceId":"dev1","moduleId":"filter","managedBy":"ops","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`)
	if r.status != 200 || r.body["managedBy"] != "ops" || r.body["authentication"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"] != key {
		t.Fatalf("update: %d %s", r.status, r.raw)
	}

	// The module twin is its own, apart from the device's.
	r = c.do("PATCH", "/twins/dev1/modules/filter", "*", `{"tags":{"role":"filter"},"properties":{"desired":{"threshold":7}}}`)
	if r.status != 200 || r.body["moduleId"] != "filter" || r.body["deviceId"] != "dev1" {
		t.Fatalf("module twin patch: %d %s", r.status, r.raw)
	}
	if d := r.body["properties"].(map[string]any)["desired"].(map[string]any); d["threshold"] != float64(7) {
		t.Fatalf("module twin desired: %s", r.raw)
	}
	if dt := c.do("GET", "/twins/dev1", "", ""); strings.Contains(dt.raw, "threshold") {
		t.Fatalf("module desired leaked into the device twin: %s", dt.raw)
	}
	r = c.do("PUT", "/twins/dev1/modules/filter", "*", `{"properties":{"desired":{"mode":"fast"}}}`)
	if d := r.body["properties"].(map[string]any)["desired"].(map[string]any); r.status != 200 || d["mode"] != "fast" || d["threshold"] != nil {
		t.Fatalf("module twin replace: %d %s", r.status, r.raw)
	}

	if r := c.do("DELETE", "/devices/dev1/modules/second", `"*"`, ""); r.status != 204 {
		t.Fatalf("delete module: %d %s", r.status, r.raw)
	}
	// Deleting the device deletes its modules.
	if r := c.do("DELETE", "/devices/dev1", `"*"`, ""); r.status != 204 {
		t.Fatalf("delete device: %d %s", r.status, r.raw)
	}
	createDevice(t, h, "dev1")
	if r := c.do("GET", "/devices/dev1/modules/filter", "", ""); r.status != 404 {
		t.Fatalf("module outlived its device: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/devices/dev1-x/modules/other", "", ""); r.status != 200 {
		t.Fatalf("another device's module went too: %d %s", r.status, r.raw)
	}
	// Reading modules needs RegistryRead.
	if r := newRESTClient(t, e, h, "device").do("GET", "/devices/dev1-x/modules", "", ""); r.status != 401 {
		t.Fatalf("device policy listed modules: %d", r.status)
	}
}

// TestHubStateOverManagerRestart: what a hub keeps (modules, module twins,
// CA certificates, telemetry with its sequence numbers) is there again
// after the node's hubs stop and start on the same store.
func TestHubStateOverManagerRestart(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("keep-hub", "127.0.19.17")
	c := newRESTClient(t, e, h, "iothubowner")
	createDevice(t, h, "dev1")
	if r := c.do("PUT", "/devices/dev1/modules/m1", "", `{}`); r.status != 200 {
		t.Fatalf("create module: %d %s", r.status, r.raw)
	}
	if r := c.do("PATCH", "/twins/dev1/modules/m1", "*", `{"properties":{"desired":{"k":1}}}`); r.status != 200 {
		t.Fatalf("module twin: %d %s", r.status, r.raw)
	}
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: h.Config().HostName, addr: mqttAddr(h), tlsName: h.Config().HostName, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"one", "two"} {
		dc.publish(t, "devices/dev1/messages/events/", 1, body)
	}
	dc.Disconnect(100)
	waitMessage(t, h, "dev1", "two")

	e.restart()
	h = e.hub("keep-hub")
	c = newRESTClient(t, e, h, "iothubowner")
	if r := c.do("GET", "/twins/dev1/modules/m1", "", ""); r.status != 200 || !strings.Contains(r.raw, `"k":1`) {
		t.Fatalf("module twin after restart: %d %s", r.status, r.raw)
	}
	msgs := h.Messages("dev1", 0, 0)
	if len(msgs) != 2 || msgs[0].Body != "one" || msgs[1].Body != "two" || msgs[1].SequenceNumber != 2 {
		t.Fatalf("telemetry after restart: %+v", msgs)
	}
	dc, _, err = dialDevice(t, e, "dev1", dialOpts{host: h.Config().HostName, addr: mqttAddr(h), tlsName: h.Config().HostName, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.publish(t, "devices/dev1/messages/events/", 1, "three")
	waitMessage(t, h, "dev1", "three")
	if msgs := h.Messages("dev1", 2, 0); len(msgs) != 1 || msgs[0].SequenceNumber != 3 {
		t.Fatalf("sequence numbers do not continue: %+v", msgs)
	}
}
