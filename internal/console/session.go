package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/instance"
)

// cookieName has the __Host- prefix: browsers keep such a cookie only if
// it is Secure, has Path=/ and no Domain, so no sibling host can set it.
const cookieName = "__Host-dpsd-console"

// csrfHeader carries the session's CSRF token on every change.
const csrfHeader = "X-CSRF-Token"

// session is one signed-in browser. The key stays on the server, to sign
// the tokens of the calls the console forwards.
type session struct {
	id      string // the cookie's value; the map holds its hash
	policy  string
	key     string
	csrf    string
	expires time.Time // absolute
	seen    time.Time // last request, for the idle timeout
}

// sessionView is what the browser learns of its session.
type sessionView struct {
	SignedIn  bool             `json:"signedIn"`
	Policy    string           `json:"policy,omitempty"`
	Rights    []instance.Right `json:"rights,omitempty"`
	CSRFToken string           `json:"csrfToken,omitempty"`
	Expires   time.Time        `json:"expires,omitzero"`
}

func (s *session) view(p *instance.Policy) sessionView {
	return sessionView{SignedIn: true, Policy: p.KeyName, Rights: p.Rights, CSRFToken: s.csrf, Expires: s.expires}
}

// sessions holds the node's sessions in memory: a restart signs everyone
// out, and each node of a cluster has its own (a browser keeps to one
// node through its address).
type sessions struct {
	mu       sync.Mutex
	byHash   map[string]*session
	ttl      time.Duration
	idle     time.Duration
	max      int
	now      func() time.Time
	lastScan time.Time
}

func newSessions(ttl, idle time.Duration, max int, now func() time.Time) *sessions {
	return &sessions{byHash: map[string]*session{}, ttl: ttl, idle: idle, max: max, now: now}
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// hash keys the map, so the map's keys are not themselves cookies.
func hash(id string) string {
	h := sha256.Sum256([]byte(id))
	return string(h[:])
}

func (ss *sessions) create(policy, key string) (*session, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.now()
	if len(ss.byHash) >= ss.max {
		ss.expireLocked(now)
		if len(ss.byHash) >= ss.max {
			return nil, dps.Errorf(dps.CodeServiceUnavailable, "Too many console sessions are open; try again later.")
		}
	}
	s := &session{id: randomToken(), policy: policy, key: key, csrf: randomToken(), expires: now.Add(ss.ttl), seen: now}
	ss.byHash[hash(s.id)] = s
	return s, nil
}

// get returns the request's live session, or nil; it counts as activity.
func (ss *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.now()
	if now.Sub(ss.lastScan) > time.Minute {
		ss.expireLocked(now)
	}
	s := ss.byHash[hash(c.Value)]
	if s == nil {
		return nil
	}
	if ss.expired(s, now) {
		delete(ss.byHash, hash(s.id))
		return nil
	}
	s.seen = now
	return s
}

func (ss *sessions) expired(s *session, now time.Time) bool {
	return !now.Before(s.expires) || now.Sub(s.seen) >= ss.idle
}

func (ss *sessions) expireLocked(now time.Time) {
	ss.lastScan = now
	for h, s := range ss.byHash {
		if ss.expired(s, now) {
			delete(ss.byHash, h)
		}
	}
}

func (ss *sessions) remove(s *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byHash, hash(s.id))
}

func (ss *sessions) setCookie(w http.ResponseWriter, s *session) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: s.id, Path: "/",
		Expires: s.expires, MaxAge: int(ss.ttl / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
}

func (ss *sessions) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: "", Path: "/", MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
}
