package builtinhub_test

import (
	"fmt"
	"strings"
	"testing"
)

func TestBulkRegistryOperation(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("bulk-hub", "127.0.19.13")
	c := newRESTClient(t, e, h, "iothubowner")

	// Node's Registry.addDevices: importMode "create", id for deviceId.
	r := c.do("POST", "/devices", "", `[{"id":"b1","importMode":"create","tags":{"site":"x"},"properties":{"desired":{"rate":5}}},
		{"id":"b2","importMode":"create","capabilities":{"iotEdge":true}}]`)
	if r.status != 200 || r.body["isSuccessful"] != true || len(r.body["errors"].([]any)) != 0 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	tw := c.do("GET", "/twins/b1", "", "")
	if tw.body["tags"].(map[string]any)["site"] != "x" || tw.body["properties"].(map[string]any)["desired"].(map[string]any)["rate"] != float64(5) {
		t.Fatalf("bulk-created twin %s", tw.raw)
	}
	if d := c.do("GET", "/devices/b2", "", ""); !strings.HasPrefix(fmt.Sprint(d.body["deviceScope"]), "ms-azure-iot-edge://b2-") {
		t.Fatalf("bulk-created edge device %s", d.raw)
	}
	b1 := c.do("GET", "/devices/b1", "", "")
	etag := b1.body["etag"].(string)

	// Per-device failures: 200, isSuccessful false, the failed devices listed.
	r = c.do("POST", "/devices", "", `[{"id":"b1","importMode":"create"},{"id":"b3","importMode":"create"},
		{"id":"b2","importMode":"UpdateIfMatchETag","eTag":"stale","status":"disabled"},{"id":"nobody","importMode":"Update"}]`)
	if r.status != 200 || r.body["isSuccessful"] != false {
		t.Fatalf("mixed: %d %s", r.status, r.raw)
	}
	got := map[string]string{}
	for _, x := range r.body["errors"].([]any) {
		m := x.(map[string]any)
		got[m["deviceId"].(string)] = m["errorCode"].(string)
	}
	if want := map[string]string{"b1": "DeviceAlreadyExists", "b2": "PreconditionFailed", "nobody": "DeviceNotFound"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("errors %v, want %v: %s", got, want, r.raw)
	}
	if d := c.do("GET", "/devices/b3", "", ""); d.status != 200 {
		t.Fatalf("b3 not created beside the failures: %d", d.status)
	}

	// Update by etag, then delete by etag and by force.
	r = c.do("POST", "/devices", "", `[{"id":"b1","importMode":"UpdateIfMatchETag","eTag":"`+etag+`","status":"disabled"}]`)
	if r.status != 200 || r.body["isSuccessful"] != true {
		t.Fatalf("update by etag: %d %s", r.status, r.raw)
	}
	b1 = c.do("GET", "/devices/b1", "", "")
	if b1.body["status"] != "disabled" {
		t.Fatalf("not updated: %s", b1.raw)
	}
	r = c.do("POST", "/devices", "", `[{"id":"b1","importMode":"DeleteIfMatchETag","eTag":"`+etag+`"},{"id":"b2","importMode":"Delete"},{"id":"b3","importMode":"Delete"}]`)
	if r.status != 200 || r.body["isSuccessful"] != false || len(r.body["errors"].([]any)) != 1 {
		t.Fatalf("delete with one stale etag: %d %s", r.status, r.raw)
	}
	r = c.do("POST", "/devices", "", `[{"id":"b1","importMode":"DeleteIfMatchETag","eTag":"`+b1.body["etag"].(string)+`"}]`)
	if r.status != 200 || r.body["isSuccessful"] != true {
		t.Fatalf("delete by etag: %d %s", r.status, r.raw)
	}
	for _, id := range []string{"b1", "b2", "b3"} {
		if d := c.do("GET", "/devices/"+id, "", ""); d.status != 404 {
			t.Fatalf("%s still there: %d", id, d.status)
		}
	}

	// Requests wrong as a whole change nothing.
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf(`{"id":"m%d","importMode":"create"}`, i)
	}
	for name, body := range map[string]string{
		"empty":        `[]`,
		"101 devices":  "[" + strings.Join(many, ",") + "]",
		"unknown mode": `[{"id":"x1","importMode":"create"},{"id":"x2","importMode":"explode"}]`,
		"duplicate":    `[{"id":"x1","importMode":"create"},{"id":"X1","importMode":"delete"}]`,
		"bad id":       `[{"id":"a/b","importMode":"create"}]`,
		"not an array": `{"id":"x1"}`,
	} {
		if r := c.do("POST", "/devices", "", body); r.status != 400 {
			t.Errorf("%s: %d %s", name, r.status, r.raw)
		}
	}
	if d := c.do("GET", "/devices/x1", "", ""); d.status != 404 {
		t.Fatalf("a rejected request created x1")
	}
	// Writing needs RegistryWrite.
	if r := newRESTClient(t, e, h, "registryRead").do("POST", "/devices", "", `[{"id":"y","importMode":"create"}]`); r.status != 401 {
		t.Fatalf("registryRead bulk: %d", r.status)
	}
}
