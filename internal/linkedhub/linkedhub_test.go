package linkedhub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

const (
	toastersCS  = "HostName=contoso-toasters-hub-1098.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=dG9hc3RlcnMta2V5LXNlY3JldA=="
	heatpumpsCS = "HostName=contoso-heatpumps-hub-1098.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=aGVhdHB1bXBzLWtleS1zZWNyZXQ="
	toasters    = "contoso-toasters-hub-1098.azure-devices.net"
	heatpumps   = "contoso-heatpumps-hub-1098.azure-devices.net"
	toasterKey  = "dG9hc3RlcnMta2V5LXNlY3JldA=="
)

func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func ptr[T any](v T) *T { return &v }

func code(err error) int {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return 0
}

func TestCreateValidation(t *testing.T) {
	tests := []struct {
		name     string
		def      Definition
		wantCode int
		check    func(t *testing.T, h *Hub)
	}{
		{name: "defaults", def: Definition{ConnectionString: toastersCS}, check: func(t *testing.T, h *Hub) {
			if h.Name != toasters || h.AllocationWeight != 1 || !h.ApplyAllocationPolicy || h.Location != "" {
				t.Errorf("hub = %+v; want name %s, weight 1, apply true", h, toasters)
			}
		}},
		{name: "all members", def: Definition{ConnectionString: toastersCS, AllocationWeight: ptr(1000), ApplyAllocationPolicy: ptr(false), Location: ptr(" westeurope ")}, check: func(t *testing.T, h *Hub) {
			if h.AllocationWeight != 1000 || h.ApplyAllocationPolicy || h.Location != "westeurope" {
				t.Errorf("hub = %+v", h)
			}
		}},
		{name: "missing connection string", def: Definition{}, wantCode: dps.CodeInvalidArgument},
		{name: "weight 0", def: Definition{ConnectionString: toastersCS, AllocationWeight: ptr(0)}, wantCode: dps.CodeInvalidArgument},
		{name: "weight 1001", def: Definition{ConnectionString: toastersCS, AllocationWeight: ptr(1001)}, wantCode: dps.CodeInvalidArgument},
		{name: "device connection string", def: Definition{ConnectionString: "HostName=h.example;DeviceId=d;SharedAccessKey=" + toasterKey}, wantCode: dps.CodeInvalidArgument},
		{name: "key not base64", def: Definition{ConnectionString: "HostName=h.example;SharedAccessKeyName=o;SharedAccessKey=not*base64"}, wantCode: dps.CodeInvalidArgument},
		{name: "no host", def: Definition{ConnectionString: "SharedAccessKeyName=o;SharedAccessKey=" + toasterKey}, wantCode: dps.CodeInvalidArgument},
		{name: "name mismatch", def: Definition{Name: "other", ConnectionString: toastersCS}, wantCode: dps.CodeInvalidArgument},
		{name: "host with port", def: Definition{ConnectionString: "HostName=127.0.0.7:8443;SharedAccessKeyName=o;SharedAccessKey=" + toasterKey}, check: func(t *testing.T, h *Hub) {
			if h.Name != "127.0.0.7:8443" {
				t.Errorf("name = %q", h.Name)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := New(newStore(t))
			h, err := reg.Create(t.Context(), tt.def)
			if tt.wantCode != 0 {
				if code(err) != tt.wantCode {
					t.Fatalf("err = %v; want code %d", err, tt.wantCode)
				}
				if err != nil && strings.Contains(err.Error(), toasterKey) {
					t.Errorf("error message leaks the key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			tt.check(t, h)
			got, err := reg.Get(t.Context(), strings.ToUpper(h.Name))
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			tt.check(t, got)
		})
	}
}

func TestRegistryLifecycle(t *testing.T) {
	ctx := t.Context()
	reg := New(newStore(t))
	if _, err := reg.Create(ctx, Definition{ConnectionString: toastersCS}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, Definition{ConnectionString: toastersCS}); code(err) != dps.CodeConflict {
		t.Fatalf("second create: err = %v; want conflict", err)
	}
	if _, err := reg.Put(ctx, Definition{ConnectionString: heatpumpsCS, AllocationWeight: ptr(3)}); err != nil {
		t.Fatal(err)
	}
	h, err := reg.Put(ctx, Definition{ConnectionString: heatpumpsCS, Location: ptr("eastus")})
	if err != nil || h.AllocationWeight != 3 || h.Location != "eastus" {
		t.Fatalf("put existing = %+v, %v; want weight kept, location set", h, err)
	}

	list, err := reg.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != heatpumps || list[1].Name != toasters {
		t.Fatalf("list = %v, %v", list, err)
	}

	u, err := reg.Update(ctx, toasters, Definition{AllocationWeight: ptr(5), ApplyAllocationPolicy: ptr(false)}, list[1].ETag)
	if err != nil || u.AllocationWeight != 5 || u.ApplyAllocationPolicy {
		t.Fatalf("update = %+v, %v", u, err)
	}
	if _, err := reg.Update(ctx, toasters, Definition{AllocationWeight: ptr(6)}, list[1].ETag); code(err) != dps.CodePreconditionFailed {
		t.Fatalf("update with stale etag: err = %v; want 412", err)
	}
	if _, err := reg.Update(ctx, toasters, Definition{ConnectionString: heatpumpsCS}, ""); code(err) != dps.CodeInvalidArgument {
		t.Fatalf("update to another host: err = %v; want 400004", err)
	}

	cs, err := reg.HubConnectionString(ctx, strings.ToUpper(toasters))
	if err != nil || cs.HostName != toasters || cs.SharedAccessKey != toasterKey || cs.SharedAccessKeyName != "iothubowner" {
		t.Fatalf("HubConnectionString = %+v, %v", cs, err)
	}

	if err := reg.Delete(ctx, toasters, ""); err != nil {
		t.Fatal(err)
	}
	_, err = reg.HubConnectionString(ctx, toasters)
	if !errors.Is(err, ErrNotFound) || code(err) != dps.CodeIoTHubNotLinked {
		t.Fatalf("after delete: err = %v; want ErrNotFound and 400210", err)
	}
	if err := reg.Delete(ctx, toasters, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: err = %v", err)
	}
}

func TestRedacted(t *testing.T) {
	h := &Hub{Name: toasters, ConnectionString: toastersCS}
	got := Redacted(h).ConnectionString
	want := "HostName=" + toasters + ";SharedAccessKeyName=iothubowner;SharedAccessKey=****"
	if got != want {
		t.Errorf("Redacted = %q; want %q", got, want)
	}
	if h.ConnectionString != toastersCS {
		t.Error("Redacted modified the original")
	}
}

func TestHandler(t *testing.T) {
	reg := New(newStore(t))
	var authorized int
	h := reg.Handler(HandlerOptions{Logger: slog.New(slog.DiscardHandler), Authorize: func(r *http.Request) error {
		authorized++
		if r.Header.Get("Authorization") != "ok" {
			return dps.Errorf(dps.CodeUnauthorized, "no")
		}
		return nil
	}})
	// Mounted the way dpsd mounts it.
	mux := http.NewServeMux()
	mux.Handle("/dpsd/linkedHubs", h)
	mux.Handle("/dpsd/linkedHubs/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	steps := []struct {
		name, method, path, body, auth string
		wantStatus                     int
		wantBody                       []string // substrings
	}{
		{"unauthorized", "GET", "/dpsd/linkedHubs", "", "bad", 401, []string{`"errorCode":401000`}},
		{"empty list", "GET", "/dpsd/linkedHubs", "", "ok", 200, []string{`[]`}},
		{"create", "POST", "/dpsd/linkedHubs", `{"connectionString":"` + toastersCS + `","allocationWeight":2}`, "ok", 201,
			[]string{`"name":"` + toasters + `"`, `SharedAccessKey=****`, `"allocationWeight":2`, `"applyAllocationPolicy":true`}},
		{"create bad weight", "POST", "/dpsd/linkedHubs", `{"connectionString":"` + heatpumpsCS + `","allocationWeight":0}`, "ok", 400, []string{`"errorCode":400004`}},
		{"create unknown member", "POST", "/dpsd/linkedHubs", `{"connectionString":"` + heatpumpsCS + `","weight":3}`, "ok", 400, []string{`"errorCode":400004`}},
		{"put creates", "PUT", "/dpsd/linkedHubs/" + heatpumps, `{"connectionString":"` + heatpumpsCS + `","location":"eastus"}`, "ok", 201, []string{`"location":"eastus"`}},
		{"put wrong name", "PUT", "/dpsd/linkedHubs/other.example", `{"connectionString":"` + heatpumpsCS + `"}`, "ok", 400, []string{`"errorCode":400004`}},
		{"list", "GET", "/dpsd/linkedHubs/", "", "ok", 200, []string{toasters, heatpumps, `SharedAccessKey=****`}},
		{"show", "GET", "/dpsd/linkedHubs/" + strings.ToUpper(toasters), "", "ok", 200, []string{`"name":"` + toasters + `"`}},
		{"patch", "PATCH", "/dpsd/linkedHubs/" + toasters, `{"applyAllocationPolicy":false}`, "ok", 200, []string{`"applyAllocationPolicy":false`, `"allocationWeight":2`}},
		{"show missing", "GET", "/dpsd/linkedHubs/nope.example", "", "ok", 404, []string{`"errorCode":404000`}},
		{"bad method", "POST", "/dpsd/linkedHubs/" + toasters, `{}`, "ok", 405, nil},
		{"delete", "DELETE", "/dpsd/linkedHubs/" + toasters, "", "ok", 204, nil},
		{"delete again", "DELETE", "/dpsd/linkedHubs/" + toasters, "", "ok", 404, nil},
	}
	for _, s := range steps {
		req, err := http.NewRequestWithContext(t.Context(), s.method, srv.URL+s.path, strings.NewReader(s.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", s.auth)
		if s.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.wantStatus {
			t.Errorf("%s: status %d; want %d (%s)", s.name, resp.StatusCode, s.wantStatus, body)
		}
		for _, w := range s.wantBody {
			if !bytes.Contains(body, []byte(w)) {
				t.Errorf("%s: body %s lacks %s", s.name, body, w)
			}
		}
		if bytes.Contains(body, []byte(toasterKey)) || bytes.Contains(body, []byte("aGVhdHB1bXBzLWtleS1zZWNyZXQ")) {
			t.Errorf("%s: body leaks a key: %s", s.name, body)
		}
		if resp.StatusCode == 200 || resp.StatusCode == 201 {
			var v any
			if err := json.Unmarshal(body, &v); err != nil {
				t.Errorf("%s: body is not JSON: %v", s.name, err)
			}
		}
	}
	if authorized != len(steps) {
		t.Errorf("Authorize called %d times; want %d (once per request)", authorized, len(steps))
	}
}

func TestQuotedETags(t *testing.T) {
	ctx := t.Context()
	reg := New(newStore(t))
	h, err := reg.Create(ctx, Definition{ConnectionString: toastersCS})
	if err != nil {
		t.Fatal(err)
	}
	// Clients send etags quoted, weak or bare, as for enrollments.
	for _, form := range []func(string) string{
		func(e string) string { return `"` + e + `"` },
		func(e string) string { return `W/"` + e + `"` },
		func(e string) string { return e },
	} {
		if h, err = reg.Update(ctx, toasters, Definition{AllocationWeight: ptr(2)}, form(h.ETag)); err != nil {
			t.Fatalf("update with If-Match %s: %v", form(h.ETag), err)
		}
	}
	if _, err := reg.Update(ctx, toasters, Definition{AllocationWeight: ptr(3)}, `"stale"`); code(err) != dps.CodePreconditionFailed {
		t.Fatalf("stale etag: %v", err)
	}
	if err := reg.Delete(ctx, toasters, `"`+h.ETag+`"`); err != nil {
		t.Fatalf("delete with a quoted etag: %v", err)
	}
}

// downStore is a store whose database cannot be reached.
type downStore struct{ store.Store }

func (downStore) List(context.Context, store.Kind, store.ListOptions) ([]store.Record, bool, error) {
	return nil, false, store.ErrUnavailable
}

func TestHandlerStoreUnavailable(t *testing.T) {
	h := New(downStore{newStore(t)}).Handler(HandlerOptions{Logger: slog.New(slog.DiscardHandler)})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/dpsd/linkedHubs", nil))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Errorf("list with the store down: %d, Retry-After %q; want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
}
