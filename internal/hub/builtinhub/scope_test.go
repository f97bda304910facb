package builtinhub_test

import (
	"strings"
	"testing"
)

func TestEdgeScopes(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("scope-hub", "127.0.19.10")
	c := newRESTClient(t, e, h, "iothubowner")

	r := c.do("PUT", "/devices/edge1", "", `{"deviceId":"edge1","capabilities":{"iotEdge":true}}`)
	if r.status != 200 {
		t.Fatalf("create edge: %d %s", r.status, r.raw)
	}
	scope, _ := r.body["deviceScope"].(string)
	if want := "ms-azure-iot-edge://edge1-" + r.body["generationId"].(string); scope != want {
		t.Fatalf("edge deviceScope %q, want %q", scope, want)
	}

	// A leaf device names its parent by deviceScope (older clients) or parentScopes.
	r = c.do("PUT", "/devices/leaf1", "", `{"deviceId":"leaf1","deviceScope":"`+scope+`"}`)
	if r.status != 200 || r.body["deviceScope"] != scope || !sameScopes(r.body["parentScopes"], scope) {
		t.Fatalf("leaf by deviceScope: %d %s", r.status, r.raw)
	}
	r = c.do("PUT", "/devices/leaf2", "", `{"deviceId":"leaf2","parentScopes":["`+scope+`"]}`)
	if r.status != 200 || r.body["deviceScope"] != scope || !sameScopes(r.body["parentScopes"], scope) {
		t.Fatalf("leaf by parentScopes: %d %s", r.status, r.raw)
	}
	// A nested edge device keeps its own scope and has a parent.
	r = c.do("PUT", "/devices/edge2", "", `{"deviceId":"edge2","capabilities":{"iotEdge":true},"parentScopes":["`+scope+`"]}`)
	own2, _ := r.body["deviceScope"].(string)
	if r.status != 200 || !strings.HasPrefix(own2, "ms-azure-iot-edge://edge2-") || !sameScopes(r.body["parentScopes"], scope) {
		t.Fatalf("nested edge: %d %s", r.status, r.raw)
	}
	if tw := c.do("GET", "/twins/leaf2", "", ""); tw.body["deviceScope"] != scope || !sameScopes(tw.body["parentScopes"], scope) {
		t.Fatalf("leaf twin scopes: %s", tw.raw)
	}
	// Turning a leaf into an edge device gives it its own scope and keeps its parent.
	r = c.do("PUT", "/devices/leaf1", "*", `{"deviceId":"leaf1","capabilities":{"iotEdge":true},"deviceScope":"`+scope+`","parentScopes":["`+scope+`"]}`)
	if own, _ := r.body["deviceScope"].(string); r.status != 200 || !strings.HasPrefix(own, "ms-azure-iot-edge://leaf1-") || !sameScopes(r.body["parentScopes"], scope) {
		t.Fatalf("leaf made edge: %d %s", r.status, r.raw)
	}

	for name, body := range map[string]string{
		"not a scope":    `{"deviceId":"bad1","deviceScope":"somewhere"}`,
		"unknown parent": `{"deviceId":"bad2","parentScopes":["ms-azure-iot-edge://ghost-1"]}`,
		"stale scope":    `{"deviceId":"bad3","parentScopes":["ms-azure-iot-edge://edge1-1"]}`,
		"leaf as parent": `{"deviceId":"bad4","parentScopes":["ms-azure-iot-edge://leaf2-1"]}`,
		"two parents":    `{"deviceId":"bad5","parentScopes":["` + scope + `","` + own2 + `"]}`,
		"its own parent": `{"deviceId":"edge1","capabilities":{"iotEdge":true},"parentScopes":["` + scope + `"]}`,
	} {
		ifMatch := ""
		if strings.Contains(body, `"edge1"`) {
			ifMatch = "*"
		}
		if r := c.do("PUT", "/devices/"+strings.Split(strings.Split(body, `"deviceId":"`)[1], `"`)[0], ifMatch, body); r.status != 400 || !strings.Contains(r.raw, "ArgumentInvalid") {
			t.Errorf("%s: %d %s", name, r.status, r.raw)
		}
	}
}

func sameScopes(v any, want ...string) bool {
	l, _ := v.([]any)
	if len(l) != len(want) {
		return false
	}
	for i := range l {
		if l[i] != want[i] {
			return false
		}
	}
	return true
}

func TestTwinPatchDesiredNullClears(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("null-hub", "127.0.19.11")
	c := newRESTClient(t, e, h, "iothubowner")
	createDevice(t, h, "dev1")
	if r := c.do("PATCH", "/twins/dev1", "*", `{"tags":{"site":"a"},"properties":{"desired":{"a":1,"b":{"c":2}}}}`); r.status != 200 {
		t.Fatalf("patch: %d %s", r.status, r.raw)
	}
	r := c.do("PATCH", "/twins/dev1", "*", `{"properties":{"desired":null}}`)
	if r.status != 200 {
		t.Fatalf("desired null: %d %s", r.status, r.raw)
	}
	desired := r.body["properties"].(map[string]any)["desired"].(map[string]any)
	for k := range desired {
		if !strings.HasPrefix(k, "$") {
			t.Fatalf("desired null left %q: %s", k, r.raw)
		}
	}
	if desired["$version"] != float64(3) || r.body["tags"].(map[string]any)["site"] != "a" {
		t.Fatalf("desired null: %s", r.raw)
	}
	// No "desired" at all changes nothing.
	r = c.do("PATCH", "/twins/dev1", "*", `{"properties":{}}`)
	if d := r.body["properties"].(map[string]any)["desired"].(map[string]any); r.status != 200 || d["$version"] != float64(3) {
		t.Fatalf("empty properties: %d %s", r.status, r.raw)
	}
}
