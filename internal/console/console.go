package console

import (
	"bytes"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/sas"
)

// Prefix is where the console is served; "/" redirects here.
const Prefix = "/console/"

// apiVersion is the service API version the console speaks.
const apiVersion = "2021-10-01"

// Defaults of Options.
const (
	DefaultSessionTTL = 8 * time.Hour
	DefaultIdleTTL    = 30 * time.Minute
	DefaultMaxSession = 1000
)

// maxSignInBytes bounds a sign-in body: a connection string is a few
// hundred bytes.
const maxSignInBytes = 16 << 10

//go:embed assets
var assets embed.FS

// Options configure the console.
type Options struct {
	// Upstream serves the service API and dpsd's /dpsd/ endpoints; the
	// console forwards the browser's calls to it with a SAS token of the
	// session's policy, so those handlers alone decide what a session may
	// do.
	Upstream http.Handler
	// Policy finds a shared access policy by name (instance.Instance.Policy).
	Policy func(name string) (*instance.Policy, bool)
	// Audience is a host name Upstream accepts as a token's sr.
	Audience string
	// Info returns the node's facts for the overview.
	Info func() *admin.Info
	// SessionTTL bounds a session's life, IdleTTL the time between two
	// requests; MaxSessions the sessions held (a sign-in past it is
	// refused until some expire). Zero means the defaults.
	SessionTTL, IdleTTL time.Duration
	MaxSessions         int
	Logger              *slog.Logger
	Now                 func() time.Time
}

// Console is the web console's HTTP handler.
type Console struct {
	opt      Options
	log      *slog.Logger
	sessions *sessions
	static   http.Handler
}

// New returns the console. It panics without Upstream, Policy or Info,
// which are wiring mistakes.
func New(opt Options) *Console {
	if opt.Upstream == nil || opt.Policy == nil || opt.Info == nil {
		panic("console.New: Upstream, Policy and Info are required")
	}
	if opt.SessionTTL <= 0 {
		opt.SessionTTL = DefaultSessionTTL
	}
	if opt.IdleTTL <= 0 {
		opt.IdleTTL = DefaultIdleTTL
	}
	if opt.MaxSessions <= 0 {
		opt.MaxSessions = DefaultMaxSession
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err)
	}
	return &Console{
		opt:      opt,
		log:      opt.Logger,
		sessions: newSessions(opt.SessionTTL, opt.IdleTTL, opt.MaxSessions, opt.Now),
		static:   http.StripPrefix(Prefix+"static/", http.FileServerFS(sub)),
	}
}

// contentSecurityPolicy allows the console's own scripts, styles and
// calls only: no inline script or style, no other origin, no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// setSecurityHeaders sets the headers every console answer carries.
func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}

// ServeHTTP serves the console's pages under Prefix and its API under
// Prefix+"api/".
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w.Header())
	path := r.URL.Path
	switch {
	case path == "/" || path == strings.TrimSuffix(Prefix, "/"):
		http.Redirect(w, r, Prefix, http.StatusFound)
	case path == Prefix || path == Prefix+"index.html":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", r.Method, path))
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		// FileServer redirects index.html to its directory; serve the
		// bytes directly instead.
		data, err := assets.ReadFile("assets/index.html")
		if err != nil {
			c.fail(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(data)
	case strings.HasPrefix(path, Prefix+"static/") && !strings.HasSuffix(path, "/"):
		// (Directories are not listed.)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", r.Method, path))
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		c.static.ServeHTTP(w, r)
	case strings.HasPrefix(path, Prefix+"api/"):
		w.Header().Set("Cache-Control", "no-store")
		c.serveAPI(w, r)
	default:
		c.fail(w, r, dps.Errorf(dps.CodeNotFound, "No console page has the path %q.", path))
	}
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	httperr.Write(w, r, c.log, err)
}

// serveAPI serves the console's own calls (session, info, derived keys)
// and forwards the others to Upstream.
func (c *Console) serveAPI(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, Prefix+"api/")
	if !c.sameOrigin(r) {
		c.fail(w, r, dps.Errorf(dps.CodeForbidden, "The request comes from another origin."))
		return
	}
	if rest == "session" {
		switch r.Method {
		case http.MethodPost:
			c.signIn(w, r)
			return
		case http.MethodGet, http.MethodDelete:
		default:
			c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on the session; use GET, POST or DELETE.", r.Method))
			return
		}
	}
	s := c.sessions.get(r)
	if s == nil && rest == "session" && r.Method == http.MethodGet {
		// The pages ask on load; being signed out is an answer, not an
		// error.
		httperr.WriteJSON(w, http.StatusOK, sessionView{})
		return
	}
	if s == nil {
		c.fail(w, r, dps.Errorf(dps.CodeUnauthorized, "Not signed in, or the session expired; sign in again."))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Every change carries the session's CSRF token in a header,
		// which another site can neither read nor set.
		tok := r.Header.Get(csrfHeader)
		if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) != 1 {
			c.fail(w, r, dps.Errorf(dps.CodeForbidden, "The request has no valid %s header; reload the console.", csrfHeader))
			return
		}
	}
	// A policy removed or whose key changed ends its sessions.
	p, ok := c.opt.Policy(s.policy)
	if !ok || !keyMatches(p, s.key) {
		c.sessions.remove(s)
		c.sessions.clearCookie(w)
		c.fail(w, r, dps.Errorf(dps.CodeUnauthorized, "The session's policy or key changed; sign in again."))
		return
	}
	switch rest {
	case "session":
		if r.Method == http.MethodDelete {
			c.sessions.remove(s)
			c.sessions.clearCookie(w)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		httperr.WriteJSON(w, http.StatusOK, s.view(p))
		return
	case "info":
		c.info(w, r)
		return
	case "connectionstring":
		c.connectionString(w, r, p)
		return
	case "derivekey":
		c.deriveKey(w, r, s)
		return
	}
	// Forward the path as the browser encoded it, so that an id holding
	// an encoded "/" stays one segment.
	c.forward(w, r, s, strings.TrimPrefix(r.URL.EscapedPath(), Prefix+"api/"))
}

// sameOrigin refuses requests a browser marks as coming from another
// origin. Requests without Origin or Sec-Fetch-Site (non-browser clients)
// pass: the session cookie is SameSite=Strict and changes need the CSRF
// token anyway.
func (c *Console) sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return false
		}
	}
	return true
}

// signInRequest is the body of POST api/session: a service connection
// string, or a policy name and key.
type signInRequest struct {
	ConnectionString string `json:"connectionString"`
	Policy           string `json:"policy"`
	Key              string `json:"key"`
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		// A cross-site form cannot send JSON without a preflight.
		c.fail(w, r, dps.Errorf(dps.CodeUnsupportedMediaType, "Sign in with a JSON body."))
		return
	}
	var req signInRequest
	if err := httperr.DecodeBody(r, &req, maxSignInBytes, true, "sign-in"); err != nil {
		c.fail(w, r, err)
		return
	}
	policy, key := strings.TrimSpace(req.Policy), strings.TrimSpace(req.Key)
	if cs := strings.TrimSpace(req.ConnectionString); cs != "" {
		parsed, err := sas.ParseConnectionString(cs)
		if err != nil {
			c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "The connection string is not valid: %v.", err))
			return
		}
		if parsed.SharedAccessKeyName == "" {
			c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "The connection string names no SharedAccessKeyName: use a service connection string, not a device's."))
			return
		}
		policy, key = parsed.SharedAccessKeyName, parsed.SharedAccessKey
	}
	if policy == "" || key == "" {
		c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "Give a service connection string, or a policy name and its key."))
		return
	}
	p, ok := c.opt.Policy(policy)
	if !ok || !keyMatches(p, key) {
		// The same answer for an unknown policy and a wrong key.
		c.log.Info("console sign-in refused", "policy", policy, "remote", r.RemoteAddr)
		c.fail(w, r, dps.Errorf(dps.CodeUnauthorized, "The policy name or key is not right."))
		return
	}
	s, err := c.sessions.create(p.KeyName, key)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.sessions.setCookie(w, s)
	c.log.Info("console sign-in", "policy", p.KeyName, "remote", r.RemoteAddr)
	httperr.WriteJSON(w, http.StatusOK, s.view(p))
}

// keyMatches compares key with the policy's keys in constant time.
func keyMatches(p *instance.Policy, key string) bool {
	ok := false
	for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
		if k != "" && subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			ok = true
		}
	}
	return ok
}

// infoView is the answer of GET api/info: the node's facts without the
// owner's connection string, which api/connectionstring reveals on demand.
type infoView struct {
	IDScope       string `json:"idScope"`
	HostName      string `json:"hostName"`
	HTTPSEndpoint string `json:"httpsEndpoint"`
	MQTTEndpoint  string `json:"mqttEndpoint"`
	AMQPEndpoint  string `json:"amqpEndpoint,omitempty"`
	CACertFile    string `json:"caCertFile,omitempty"`
}

func (c *Console) info(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "Use GET."))
		return
	}
	i := c.opt.Info()
	httperr.WriteJSON(w, http.StatusOK, infoView{
		IDScope: i.IDScope, HostName: i.HostName, HTTPSEndpoint: i.HTTPSEndpoint,
		MQTTEndpoint: i.MQTTEndpoint, AMQPEndpoint: i.AMQPEndpoint, CACertFile: i.CACertFile,
	})
}

// connectionString reveals the owner's connection string, to a session of
// a policy that may configure the service (which could read it anyway).
func (c *Console) connectionString(w http.ResponseWriter, r *http.Request, p *instance.Policy) {
	if r.Method != http.MethodPost {
		c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "Use POST."))
		return
	}
	if !p.Has(instance.RightServiceConfig) {
		c.fail(w, r, dps.Errorf(dps.CodeUnauthorized, "The shared access policy %s does not grant %s, which revealing the owner's connection string needs.", p.KeyName, instance.RightServiceConfig))
		return
	}
	httperr.WriteJSON(w, http.StatusOK, map[string]string{"connectionString": c.opt.Info().ServiceConnectionString})
}

// deriveKeyRequest is the body of POST api/derivekey.
type deriveKeyRequest struct {
	GroupID        string `json:"groupId"`
	RegistrationID string `json:"registrationId"`
}

// deriveKey computes a group member's device keys. The group's keys are
// read through the service API's attestation mechanism call, with the
// session's token, so EnrollmentRead decides, and never reach the browser.
func (c *Console) deriveKey(w http.ResponseWriter, r *http.Request, s *session) {
	if r.Method != http.MethodPost {
		c.fail(w, r, dps.Errorf(dps.CodeMethodNotAllowed, "Use POST."))
		return
	}
	var req deriveKeyRequest
	if err := httperr.DecodeBody(r, &req, maxSignInBytes, true, "derive key"); err != nil {
		c.fail(w, r, err)
		return
	}
	if req.GroupID == "" || req.RegistrationID == "" {
		c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "Give the enrollment group id and the device's registration id."))
		return
	}
	path := "enrollmentGroups/" + url.PathEscape(req.GroupID) + "/attestationmechanism"
	inner := httptest.NewRequestWithContext(r.Context(), http.MethodPost, "/"+path, bytes.NewReader(nil))
	inner.Host = r.Host
	rec := httptest.NewRecorder()
	c.forward(rec, inner, s, path)
	if rec.Code != http.StatusOK {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return
	}
	var att dps.AttestationMechanism
	if err := json.Unmarshal(rec.Body.Bytes(), &att); err != nil {
		c.fail(w, r, err)
		return
	}
	if att.SymmetricKey == nil {
		c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "Enrollment group %s does not attest with symmetric keys.", req.GroupID))
		return
	}
	out := map[string]string{"registrationId": req.RegistrationID}
	for name, k := range map[string]string{"primaryKey": att.SymmetricKey.PrimaryKey, "secondaryKey": att.SymmetricKey.SecondaryKey} {
		if k == "" {
			continue
		}
		d, err := sas.DeriveDeviceKey(k, req.RegistrationID)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		out[name] = d
	}
	httperr.WriteJSON(w, http.StatusOK, out)
}

// forward sends the call to Upstream at /escaped as the session's policy:
// the path must be in one of the service API's collections or dpsd's own
// endpoints, the cookie and CSRF token stay behind, and a fresh SAS token
// of the session's policy is added.
func (c *Console) forward(w http.ResponseWriter, r *http.Request, s *session, escaped string) {
	first, _, _ := strings.Cut(escaped, "/")
	switch strings.ToLower(first) {
	case "enrollments", "enrollmentgroups", "registrations", "dpsd":
	default:
		c.fail(w, r, dps.Errorf(dps.CodeNotFound, "The console API has no path %q.", escaped))
		return
	}
	tok, err := sas.New(c.opt.Audience, s.policy, s.key, c.opt.Now().Add(5*time.Minute))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	out := r.Clone(r.Context())
	p, err := url.PathUnescape("/" + escaped)
	if err != nil {
		c.fail(w, r, dps.Errorf(dps.CodeBadRequest, "The path is not valid."))
		return
	}
	out.URL.Path, out.URL.RawPath = p, "/"+escaped
	q := out.URL.Query()
	if q.Get("api-version") == "" && strings.ToLower(first) != "dpsd" {
		q.Set("api-version", apiVersion)
		out.URL.RawQuery = q.Encode()
	}
	out.RequestURI = ""
	out.Header.Del("Cookie")
	out.Header.Del(csrfHeader)
	out.Header.Set("Authorization", tok)
	c.opt.Upstream.ServeHTTP(w, out)
}
