package console

import (
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store/sqlite"
	"github.com/dpsd/dpsd/internal/transport/serviceapi"
)

const (
	ownerKey  = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	readerKey = "cmVhZGVyLWtleS1yZWFkZXIta2V5LXJlYWRlci1rZXk="
	host      = "dps.example"
)

// env is a console in front of the real service API over a real store.
type env struct {
	t     *testing.T
	c     *Console
	h     http.Handler
	in    *instance.Instance
	clock *time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	in := &instance.Instance{IDScope: "0ne00000001", Policies: []instance.Policy{
		{KeyName: instance.OwnerPolicy, PrimaryKey: ownerKey, SecondaryKey: ownerKey, Rights: instance.AllRights},
		{KeyName: "reader", PrimaryKey: readerKey, SecondaryKey: readerKey, Rights: []instance.Right{instance.RightEnrollmentRead}},
	}}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	clock := time.Now()
	now := func() time.Time { return clock }
	up := serviceapi.New(st, in, serviceapi.Options{HostNames: []string{host}, Logger: logger})
	e := &env{t: t, in: in, clock: &clock}
	e.c = New(Options{
		Upstream: up,
		Policy:   in.Policy,
		Audience: host,
		Info: func() *admin.Info {
			return &admin.Info{IDScope: in.IDScope, ServiceConnectionString: "HostName=" + host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + ownerKey}
		},
		Logger: logger,
		Now:    now,
	})
	e.h = e.c
	return e
}

// do sends one request as a same-origin browser would.
func (e *env) do(method, path, body string, hdr map[string]string, cookie *http.Cookie) *httptest.ResponseRecorder {
	e.t.Helper()
	r := httptest.NewRequest(method, "https://"+host+path, strings.NewReader(body))
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	if cookie != nil {
		r.AddCookie(cookie)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

type signedIn struct {
	cookie *http.Cookie
	csrf   string
}

func (e *env) signIn(body string) signedIn {
	e.t.Helper()
	w := e.do("POST", "/console/api/session", body, nil, nil)
	if w.Code != http.StatusOK {
		e.t.Fatalf("sign in: %d %s", w.Code, w.Body)
	}
	var v sessionView
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		e.t.Fatal(err)
	}
	var c *http.Cookie
	for _, ck := range w.Result().Cookies() {
		if ck.Name == cookieName {
			c = ck
		}
	}
	if c == nil {
		e.t.Fatal("sign in set no session cookie")
	}
	return signedIn{cookie: c, csrf: v.CSRFToken}
}

func TestSignIn(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		body string
		want int
	}{
		{"connection string", `{"connectionString":"HostName=` + host + `;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=` + ownerKey + `"}`, 200},
		{"policy and key", `{"policy":"reader","key":"` + readerKey + `"}`, 200},
		{"policy name any case", `{"policy":"READER","key":"` + readerKey + `"}`, 200},
		{"wrong key", `{"policy":"reader","key":"` + ownerKey + `"}`, 401},
		{"unknown policy", `{"policy":"nobody","key":"` + ownerKey + `"}`, 401},
		{"device connection string", `{"connectionString":"HostName=h;DeviceId=d;SharedAccessKey=` + ownerKey + `"}`, 400},
		{"not a connection string", `{"connectionString":"hello"}`, 400},
		{"nothing", `{}`, 400},
		{"unknown field", `{"user":"x"}`, 400},
		{"not JSON", `policy=reader`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := e.do("POST", "/console/api/session", tt.body, nil, nil)
			if w.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.want, w.Body)
			}
			if tt.want != 200 {
				if w.Header().Get("Set-Cookie") != "" {
					t.Error("a refused sign-in set a cookie")
				}
				var body struct {
					ErrorCode int    `json:"errorCode"`
					Message   string `json:"message"`
				}
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.ErrorCode == 0 || body.Message == "" {
					t.Errorf("the refusal is not in the Azure error shape: %s", w.Body)
				}
				return
			}
			c := w.Result().Cookies()[0]
			if c.Name != cookieName || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.MaxAge <= 0 {
				t.Errorf("cookie %+v: want __Host- name, Secure, HttpOnly, SameSite=Strict, Path=/, an expiry", c)
			}
			if strings.Contains(w.Body.String(), ownerKey) || strings.Contains(w.Body.String(), readerKey) {
				t.Error("the sign-in answer holds the key")
			}
		})
	}
	t.Run("form post", func(t *testing.T) {
		r := httptest.NewRequest("POST", "https://"+host+"/console/api/session", strings.NewReader("policy=reader"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusUnsupportedMediaType {
			t.Fatalf("a form sign-in got %d, want 415", w.Code)
		}
	})
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/", "/console/", "/console/static/app.css", "/console/static/js/app.js", "/console/api/session", "/console/nope"} {
		w := e.do("GET", path, "", nil, nil)
		h := w.Header()
		csp := h.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "connect-src 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: CSP %q allows inline script or eval", path, csp)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
			if h.Get(k) != v {
				t.Errorf("%s: %s = %q, want %q", path, k, h.Get(k), v)
			}
		}
	}
	if w := e.do("GET", "/console/static/js/", "", nil, nil); w.Code != http.StatusNotFound {
		t.Errorf("a static directory = %d, want 404 (not listed)", w.Code)
	}
	if w := e.do("GET", "/console/static/js/app.js", "", nil, nil); w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/javascript") {
		t.Errorf("app.js = %d %q, want a JavaScript module", w.Code, w.Header().Get("Content-Type"))
	}
	if w := e.do("GET", "/", "", nil, nil); w.Code != http.StatusFound || w.Header().Get("Location") != Prefix {
		t.Errorf("GET / = %d %q, want a redirect to %s", w.Code, w.Header().Get("Location"), Prefix)
	}
	if w := e.do("GET", "/console/api/session", "", nil, nil); w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("API answers may be cached: Cache-Control %q", w.Header().Get("Cache-Control"))
	}
}

// TestAssetsHaveNoInlineScript pins what the CSP relies on, and that no
// page refers to another origin.
func TestAssetsHaveNoInlineScript(t *testing.T) {
	err := walkAssets(func(name string, data []byte) {
		s := string(data)
		if strings.HasSuffix(name, ".html") {
			for _, bad := range []string{"<script>", "onclick=", "onload=", "style=", "javascript:"} {
				if strings.Contains(s, bad) {
					t.Errorf("%s has %q: the CSP forbids inline script and style", name, bad)
				}
			}
		}
		for _, bad := range []string{"http://", "https://", "//cdn", "innerHTML", "eval(", "new Function"} {
			if strings.Contains(s, bad) && !(bad == "http://" && strings.Contains(s, "http://www.w3.org/2000/svg")) {
				t.Errorf("%s has %q", name, bad)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	owner := e.signIn(`{"policy":"provisioningserviceowner","key":"` + ownerKey + `"}`)
	reader := e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
	group := `{"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey"}}`
	tests := []struct {
		name   string
		as     *signedIn
		method string
		path   string
		body   string
		csrf   bool
		want   int
	}{
		{"signed out reads nothing", nil, "GET", "/console/api/enrollmentGroups/g1", "", false, 401},
		{"signed out session", nil, "GET", "/console/api/session", "", false, 200},
		{"signed out sign-out", nil, "DELETE", "/console/api/session", "", false, 401},
		{"owner creates", &owner, "PUT", "/console/api/enrollmentGroups/g1", group, true, 200},
		{"owner reads", &owner, "GET", "/console/api/enrollmentGroups/g1", "", false, 200},
		{"reader reads", &reader, "GET", "/console/api/enrollmentGroups/g1", "", false, 200},
		{"reader cannot create", &reader, "PUT", "/console/api/enrollmentGroups/g2", `{"enrollmentGroupId":"g2","attestation":{"type":"symmetricKey"}}`, true, 401},
		{"reader cannot delete", &reader, "DELETE", "/console/api/enrollmentGroups/g1", "", true, 401},
		{"reader cannot read registrations", &reader, "GET", "/console/api/registrations/d1", "", false, 401},
		{"reader cannot see the owner's connection string", &reader, "POST", "/console/api/connectionstring", "{}", true, 401},
		{"owner sees the connection string", &owner, "POST", "/console/api/connectionstring", "{}", true, 200},
		{"reader derives a key", &reader, "POST", "/console/api/derivekey", `{"groupId":"g1","registrationId":"dev1"}`, true, 200},
		{"only known upstream paths", &owner, "GET", "/console/api/healthz", "", false, 404},
		{"not the console itself", &owner, "GET", "/console/api/console/api/session", "", false, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{}
			var c *http.Cookie
			if tt.as != nil {
				c = tt.as.cookie
				if tt.csrf {
					hdr[csrfHeader] = tt.as.csrf
				}
			}
			w := e.do(tt.method, tt.path, tt.body, hdr, c)
			if w.Code != tt.want {
				t.Fatalf("%s %s = %d, want %d: %s", tt.method, tt.path, w.Code, tt.want, w.Body)
			}
		})
	}

	t.Run("derived key is the group key's HMAC", func(t *testing.T) {
		w := e.do("POST", "/console/api/enrollmentGroups/g1/attestationmechanism", "{}", map[string]string{csrfHeader: owner.csrf}, owner.cookie)
		var att struct {
			SymmetricKey struct{ PrimaryKey string } `json:"symmetricKey"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &att); err != nil || att.SymmetricKey.PrimaryKey == "" {
			t.Fatalf("attestation mechanism: %d %s", w.Code, w.Body)
		}
		want, _ := sas.DeriveDeviceKey(att.SymmetricKey.PrimaryKey, "dev1")
		w = e.do("POST", "/console/api/derivekey", `{"groupId":"g1","registrationId":"dev1"}`, map[string]string{csrfHeader: owner.csrf}, owner.cookie)
		if !strings.Contains(w.Body.String(), want) {
			t.Fatalf("derived %s, want primary key %s", w.Body, want)
		}
	})

	t.Run("an encoded slash stays in its segment", func(t *testing.T) {
		w := e.do("GET", "/console/api/enrollmentGroups/a%2Fb", "", nil, owner.cookie)
		var body struct{ ErrorCode int }
		json.Unmarshal(w.Body.Bytes(), &body)
		if w.Code != http.StatusNotFound || body.ErrorCode != 404204 {
			t.Fatalf("= %d %s, want 404204 (no such group)", w.Code, w.Body)
		}
	})

	t.Run("stale etag is refused", func(t *testing.T) {
		w := e.do("PUT", "/console/api/enrollmentGroups/g1", group, map[string]string{csrfHeader: owner.csrf, "If-Match": `"stale"`}, owner.cookie)
		if w.Code != http.StatusPreconditionFailed {
			t.Fatalf("stale edit = %d, want 412: %s", w.Code, w.Body)
		}
	})

	t.Run("a changed key ends the session", func(t *testing.T) {
		s := e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
		p, _ := e.in.Policy("reader")
		old := *p
		p.PrimaryKey, p.SecondaryKey = ownerKey, ownerKey
		defer func() { *p = old }()
		if w := e.do("GET", "/console/api/info", "", nil, s.cookie); w.Code != http.StatusUnauthorized {
			t.Fatalf("session after key rotation = %d, want 401", w.Code)
		}
	})
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	s := e.signIn(`{"policy":"provisioningserviceowner","key":"` + ownerKey + `"}`)
	group := `{"enrollmentGroupId":"g1","attestation":{"type":"symmetricKey"}}`
	tests := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"no token", nil, 403},
		{"wrong token", map[string]string{csrfHeader: "x" + s.csrf}, 403},
		{"other site's origin", map[string]string{csrfHeader: s.csrf, "Origin": "https://evil.example"}, 403},
		{"cross-site fetch", map[string]string{csrfHeader: s.csrf, "Sec-Fetch-Site": "cross-site"}, 403},
		{"same origin with token", map[string]string{csrfHeader: s.csrf, "Origin": "https://" + host, "Sec-Fetch-Site": "same-origin"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := e.do("PUT", "/console/api/enrollmentGroups/g1", group, tt.hdr, s.cookie)
			if w.Code != tt.want {
				t.Fatalf("= %d, want %d: %s", w.Code, tt.want, w.Body)
			}
		})
	}
	t.Run("sign-in from another origin", func(t *testing.T) {
		w := e.do("POST", "/console/api/session", `{"policy":"reader","key":"`+readerKey+`"}`, map[string]string{"Origin": "https://evil.example"}, nil)
		if w.Code != http.StatusForbidden {
			t.Fatalf("= %d, want 403", w.Code)
		}
	})
	t.Run("sign out needs the token", func(t *testing.T) {
		if w := e.do("DELETE", "/console/api/session", "", nil, s.cookie); w.Code != http.StatusForbidden {
			t.Fatalf("sign out without token = %d, want 403", w.Code)
		}
		if w := e.do("DELETE", "/console/api/session", "", map[string]string{csrfHeader: s.csrf}, s.cookie); w.Code != http.StatusNoContent {
			t.Fatalf("sign out = %d, want 204", w.Code)
		}
		if w := e.do("GET", "/console/api/info", "", nil, s.cookie); w.Code != http.StatusUnauthorized {
			t.Fatalf("session after sign-out = %d, want 401", w.Code)
		}
	})
}

func TestSessionExpiry(t *testing.T) {
	e := newEnv(t)
	s := e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
	*e.clock = e.clock.Add(DefaultIdleTTL - time.Minute)
	if w := e.do("GET", "/console/api/session", "", nil, s.cookie); w.Code != 200 {
		t.Fatalf("active session = %d", w.Code)
	}
	*e.clock = e.clock.Add(DefaultIdleTTL)
	if w := e.do("GET", "/console/api/info", "", nil, s.cookie); w.Code != http.StatusUnauthorized {
		t.Fatalf("idle session = %d, want 401", w.Code)
	}
	s = e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
	for range int(DefaultSessionTTL / (DefaultIdleTTL / 2)) {
		*e.clock = e.clock.Add(DefaultIdleTTL / 2)
		e.do("GET", "/console/api/session", "", nil, s.cookie)
	}
	if w := e.do("GET", "/console/api/info", "", nil, s.cookie); w.Code != http.StatusUnauthorized {
		t.Fatalf("session past its life = %d, want 401", w.Code)
	}
}

func TestSessionBound(t *testing.T) {
	e := newEnv(t)
	e.c.sessions.max = 3
	for range 3 {
		e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
	}
	if w := e.do("POST", "/console/api/session", `{"policy":"reader","key":"`+readerKey+`"}`, nil, nil); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("sign-in past the bound = %d, want 503", w.Code)
	}
	*e.clock = e.clock.Add(DefaultIdleTTL)
	e.signIn(`{"policy":"reader","key":"` + readerKey + `"}`)
}

// walkAssets calls f with each embedded file, for tests and checks.
func walkAssets(f func(name string, data []byte)) error {
	return fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		f(p, data)
		return nil
	})
}
