package allocpolicy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// TestHandlerCRUD: create, list, show, update with etags, delete, and a
// bad policy refused with the compiler's message and position.
func TestHandlerCRUD(t *testing.T) {
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	reg := New(db, 0)
	srv := httptest.NewUnstartedServer(reg.Handler(HandlerOptions{Logger: slog.New(slog.DiscardHandler)}))
	srv.Start()
	t.Cleanup(srv.Close)

	do := func(method, path, body string, hdr ...string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/dpsd/allocationPolicies"+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), res.Header
	}
	code := func(body string) int {
		var e dps.Error
		json.Unmarshal([]byte(body), &e)
		return e.ErrorCode
	}
	def := func(name, expr string) string {
		b, _ := json.Marshal(Definition{Name: name, Expression: expr})
		return string(b)
	}

	if st, body, _ := do("POST", "", def("first", `{"iotHubHostName": linkedHubs[0]}`)); st != 201 || !strings.Contains(body, `"name":"first"`) {
		t.Fatalf("create: %d %s", st, body)
	}
	if st, body, _ := do("POST", "", def("first", `{"iotHubHostName": linkedHubs[0]}`)); st != 409 || code(body) != dps.CodeConflict {
		t.Errorf("create twice: %d %s", st, body)
	}
	st, body, _ := do("POST", "", def("bad", "{\"iotHubHostName\":\n  registrationId + 1}"))
	if st != 400 || code(body) != dps.CodeInvalidArgument || !strings.Contains(body, "line 2, column 18") || !strings.Contains(body, "no matching overload") {
		t.Errorf("bad policy: %d %s; want 400 with the compiler's message at line 2, column 18", st, body)
	}
	if st, body, _ := do("POST", "", def("a/b", `{}`)); st != 400 {
		t.Errorf("bad name: %d %s", st, body)
	}
	st, body, h := do("GET", "/first", "")
	var p Policy
	json.Unmarshal([]byte(body), &p)
	if st != 200 || p.ETag == "" || h.Get("ETag") != p.ETag || p.Expression == "" {
		t.Fatalf("show: %d %s", st, body)
	}
	if st, body, _ := do("PUT", "/first", def("", `{"refuse": "closed"}`), "If-Match", "stale"); st != 412 {
		t.Errorf("update with a stale etag: %d %s", st, body)
	}
	st, body, _ = do("PUT", "/first", def("", `{"refuse": "closed"}`), "If-Match", `"`+p.ETag+`"`)
	var p2 Policy
	json.Unmarshal([]byte(body), &p2)
	if st != 200 || p2.ETag == p.ETag || p2.Expression != `{"refuse": "closed"}` {
		t.Errorf("update: %d %s", st, body)
	}
	if st, body, _ := do("PUT", "/nobody", def("", `{}`), "If-Match", "*"); st != 404 {
		t.Errorf("update of a missing policy: %d %s", st, body)
	}
	if st, body, _ := do("PUT", "/second", def("", `{"iotHubHostName": "h"}`)); st != 201 {
		t.Errorf("put creates: %d %s", st, body)
	}
	st, body, _ = do("GET", "", "")
	var list []Policy
	json.Unmarshal([]byte(body), &list)
	if st != 200 || len(list) != 2 || list[0].Name != "first" || list[1].Name != "second" {
		t.Errorf("list: %d %s", st, body)
	}
	// The allocator sees the new version at once.
	prg, etag, err := reg.Program(t.Context(), "first")
	if err != nil || etag != p2.ETag {
		t.Fatalf("Program: %v, etag %s; want %s", err, etag, p2.ETag)
	}
	if r, err := prg.Eval(t.Context(), &dps.AllocationRequest{}); err != nil || r.Refusal != "closed" {
		t.Errorf("Eval of the updated policy: %+v, %v", r, err)
	}
	if st, body, _ := do("DELETE", "/first", "", "If-Match", "stale"); st != 412 {
		t.Errorf("delete with a stale etag: %d %s", st, body)
	}
	if st, body, _ := do("DELETE", "/first", ""); st != 204 {
		t.Errorf("delete: %d %s", st, body)
	}
	if st, body, _ := do("GET", "/first", ""); st != 404 || code(body) != dps.CodeNotFound {
		t.Errorf("show deleted: %d %s", st, body)
	}
}
