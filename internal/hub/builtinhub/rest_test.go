package builtinhub_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// restClient sends raw requests to a hub's REST API, the way the Node
// azure-iothub Registry does (iothub-surface.md §7.5).
type restClient struct {
	t    *testing.T
	hc   *http.Client
	host string
	cs   *sas.ConnectionString
}

func newRESTClient(t *testing.T, e *env, h *builtinhub.Hub, policy string) *restClient {
	cfg := h.Config()
	var cs *sas.ConnectionString
	for _, p := range cfg.Policies {
		if p.KeyName == policy {
			cs = &sas.ConnectionString{HostName: cfg.HostName, SharedAccessKeyName: p.KeyName, SharedAccessKey: p.PrimaryKey}
		}
	}
	if cs == nil {
		t.Fatalf("no policy %s", policy)
	}
	addr := httpsAddr(h)
	tr := &http.Transport{
		TLSClientConfig: e.tlsConfig(cfg.HostName),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	return &restClient{t: t, hc: &http.Client{Transport: tr, Timeout: 20 * time.Second}, host: cfg.HostName, cs: cs}
}

type restResp struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (c *restClient) do(method, path, ifMatch, body string) restResp {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "https://"+c.host+path+"?api-version=2021-04-12", rd)
	if err != nil {
		c.t.Fatal(err)
	}
	tok, _ := sas.New(c.host, c.cs.SharedAccessKeyName, c.cs.SharedAccessKey, time.Now().Add(time.Hour))
	req.Header.Set("Authorization", tok)
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	r := restResp{status: resp.StatusCode, header: resp.Header, raw: string(data)}
	_ = json.Unmarshal(data, &r.body)
	return r
}

func TestRESTRegistryAndTwin(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("rest-hub", "127.0.0.21")
	c := newRESTClient(t, e, h, "iothubowner")

	// Node's Registry.create: no If-Match, empty keys mean "generate".
	r := c.do("PUT", "/devices/dev1", "", `{"deviceId":"dev1","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`)
	if r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	key := r.body["authentication"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
	if key == "" || r.body["etag"] == "" || r.body["generationId"] == "" || r.body["status"] != "enabled" {
		t.Fatalf("create answered %s", r.raw)
	}
	etag := r.body["etag"].(string)
	if got := r.header.Get("Content-Type"); !strings.Contains(got, "application/json") {
		t.Errorf("content type %q", got)
	}

	twin := c.do("GET", "/twins/dev1", "", "")
	twinETag, _ := twin.body["etag"].(string)

	cases := []struct {
		name, method, path, ifMatch, body string
		status                            int
		code                              string // ErrorCode in Message
	}{
		{"create again", "PUT", "/devices/dev1", "", `{"deviceId":"dev1"}`, 409, "DeviceAlreadyExists"},
		{"update quoted star", "PUT", "/devices/dev1", `"*"`, `{"deviceId":"dev1","status":"disabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`, 200, ""},
		{"update stale etag", "PUT", "/devices/dev1", `"` + etag + `"`, `{"deviceId":"dev1"}`, 412, "PreconditionFailed"},
		{"update missing", "PUT", "/devices/nope", `"*"`, `{"deviceId":"nope"}`, 412, "PreconditionFailed"},
		{"body id mismatch", "PUT", "/devices/dev9", "", `{"deviceId":"other"}`, 400, "ArgumentInvalid"},
		{"get missing", "GET", "/devices/nope", "", "", 404, "DeviceNotFound"},
		{"patch twin", "PATCH", "/twins/dev1", `"` + twinETag + `"`, `{"tags":{"region":"eu-west"},"properties":{"desired":{"telemetryInterval":30}}}`, 200, ""},
		{"patch twin stale", "PATCH", "/twins/dev1", `"` + twinETag + `"`, `{"tags":{"a":1}}`, 412, "PreconditionFailed"},
		{"patch bad key", "PATCH", "/twins/dev1", "*", `{"tags":{"a.b":1}}`, 400, "ArgumentInvalid"},
		{"patch reported", "PATCH", "/twins/dev1", "*", `{"properties":{"reported":{"a":1}}}`, 400, "ArgumentInvalid"},
		{"unknown path", "GET", "/jobs", "", "", 404, "NotFound"},
		{"delete missing", "DELETE", "/devices/nope", `"*"`, "", 404, "DeviceNotFound"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do(tc.method, tc.path, tc.ifMatch, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.raw)
			}
			if tc.code != "" {
				msg, _ := r.body["Message"].(string)
				if !strings.HasPrefix(msg, "ErrorCode:"+tc.code+";") || !strings.HasPrefix(r.body["ExceptionMessage"].(string), "Tracking ID:") {
					t.Fatalf("error body %s", r.raw)
				}
			}
		})
	}

	// The update kept the generated keys (Node sends empty keys on update).
	r = c.do("GET", "/devices/dev1", "", "")
	if got := r.body["authentication"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"]; got != key || r.body["status"] != "disabled" {
		t.Fatalf("after update: %s", r.raw)
	}
	if r.header.Get("ETag") != `"`+r.body["etag"].(string)+`"` {
		t.Errorf("ETag header %q for body etag %v", r.header.Get("ETag"), r.body["etag"])
	}

	r = c.do("GET", "/twins/dev1", "", "")
	desired := r.body["properties"].(map[string]any)["desired"].(map[string]any)
	if desired["telemetryInterval"] != float64(30) || desired["$version"] != float64(2) || desired["$metadata"] == nil {
		t.Fatalf("twin %s", r.raw)
	}
	if r.body["tags"].(map[string]any)["region"] != "eu-west" {
		t.Fatalf("twin tags %s", r.raw)
	}
	// null deletes a key.
	r = c.do("PATCH", "/twins/dev1", "*", `{"tags":{"region":null},"properties":{"desired":{"telemetryInterval":null}}}`)
	if _, ok := r.body["tags"].(map[string]any)["region"]; ok || r.status != 200 {
		t.Fatalf("null patch %d %s", r.status, r.raw)
	}

	if r := c.do("DELETE", "/devices/dev1", `"*"`, ""); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/twins/dev1", "", ""); r.status != 404 {
		t.Fatalf("twin after delete: %d", r.status)
	}
}

func TestRESTAuthorization(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("auth-hub", "127.0.0.22")
	other := e.createHub("auth-other", "127.0.0.23")

	read := newRESTClient(t, e, h, "registryRead")
	if r := read.do("GET", "/devices/x", "", ""); r.status != 404 {
		t.Fatalf("registryRead GET: %d %s", r.status, r.raw)
	}
	if r := read.do("PUT", "/devices/x", "", `{"deviceId":"x"}`); r.status != 401 {
		t.Fatalf("registryRead PUT: %d %s", r.status, r.raw)
	}

	// A token of another hub's policy does not verify here.
	c := newRESTClient(t, e, h, "iothubowner")
	oc := newRESTClient(t, e, other, "iothubowner")
	c.cs = oc.cs
	c.cs.HostName = h.Config().HostName
	if r := c.do("GET", "/devices/x", "", ""); r.status != 401 || !strings.Contains(r.raw, "IotHubUnauthorizedAccess") {
		t.Fatalf("foreign key: %d %s", r.status, r.raw)
	}

	// No token at all.
	req, _ := http.NewRequest("GET", "https://"+h.Config().HostName+"/devices/x", nil)
	resp, err := newRESTClient(t, e, h, "iothubowner").hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
}

func TestRESTDeviceIDEscaping(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("escape-hub", "127.0.0.24")
	c := newRESTClient(t, e, h, "iothubowner")
	id := "a#b?c%d"
	if r := c.do("PUT", "/devices/"+url.PathEscape(id), "", `{"deviceId":"a#b?c%d"}`); r.status != 200 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/devices/"+url.PathEscape(id), "", ""); r.status != 200 || r.body["deviceId"] != id {
		t.Fatalf("get: %d %s", r.status, r.raw)
	}
}

func TestRESTRequestsLoggedAtDebug(t *testing.T) {
	var buf syncBuffer
	e := newEnv(t, func(o *builtinhub.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	h := e.createHub("logged-hub", "127.0.10.42")
	c := newRESTClient(t, e, h, "iothubowner")
	if r := c.do(http.MethodGet, "/devices/nobody", "", ""); r.status != http.StatusNotFound {
		t.Fatalf("GET a missing device: %d", r.status)
	}
	if log := buf.String(); !strings.Contains(log, `msg="hub request"`) || !strings.Contains(log, `method=GET path=/devices/nobody status=404`) {
		t.Errorf("no debug line for the request with its status in:\n%s", log)
	}
}
