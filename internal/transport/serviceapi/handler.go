package serviceapi

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/store"
)

// MaxBodyBytes is the largest request body accepted; larger bodies get 413.
// Azure's documented message limit is 96 KB; a bulk request of ten
// enrollments with certificates and twins stays well under 1 MiB.
const MaxBodyBytes = 1 << 20

// Options configures the service API handler.
type Options struct {
	// Logger receives one debug record per request and error records for
	// failures on the server's side. nil means slog.Default().
	Logger *slog.Logger
	// HostNames are the host names clients may name as the audience (sr) of
	// their SAS tokens, compared case-insensitively: the service host name
	// from the connection string and any alias such as "localhost" or
	// "127.0.0.1". A token for any other audience is refused, so an empty
	// list refuses every request.
	HostNames []string
	// Now returns the current time, for token expiry and error timestamps.
	// nil means time.Now.
	Now func() time.Time
}

// handler serves the service API.
type handler struct {
	st   store.Store
	in   *instance.Instance
	log  *slog.Logger
	auth *Authorizer
	now  func() time.Time
}

// New returns the service API handler. It expects the full request path
// (for example /enrollments/dev1), so mount it at the root of the service
// listener or route every path whose first segment is enrollments,
// enrollmentGroups or registrations (any case) to it unchanged. in supplies
// the shared access policies and must not be nil; it is read on every
// request.
func New(st store.Store, in *instance.Instance, opts Options) http.Handler {
	if st == nil || in == nil {
		panic("serviceapi.New: store and instance are required")
	}
	h := &handler{st: st, in: in, log: opts.Logger, now: opts.Now}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.auth = NewAuthorizer(in, opts.HostNames, h.now)
	if len(h.auth.hosts) == 0 {
		h.log.Warn("service API has no accepted host names; every request will be refused")
	}
	return h
}

func normalizeHost(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

// statusWriter remembers the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// request carries what one request's handling needs.
type request struct {
	w          http.ResponseWriter
	r          *http.Request
	id         string // the id from the path, percent-decoded
	trackingID string
	policy     string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	sw := &statusWriter{ResponseWriter: w}
	req := &request{w: sw, r: r, trackingID: uuid.NewString()}
	h.serve(req)
	h.log.LogAttrs(r.Context(), slog.LevelDebug, "service API request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.EscapedPath()),
		slog.Int("status", sw.status),
		slog.String("policy", req.policy),
		slog.String("trackingId", req.trackingID),
		slog.String("remote", r.RemoteAddr),
		slog.Duration("elapsed", h.now().Sub(start)),
	)
}

func (h *handler) serve(req *request) {
	rt, id, routeErr := resolve(req.r)
	req.id = id
	if err := checkAPIVersion(req.r); err != nil {
		h.writeError(req, err)
		return
	}
	p, err := h.auth.authenticate(req.r)
	if err != nil {
		h.writeError(req, err)
		return
	}
	req.policy = p.KeyName
	if routeErr != nil {
		if len(routeErr.allow) > 0 {
			req.w.Header().Set("Allow", strings.Join(routeErr.allow, ", "))
		}
		h.writeError(req, routeErr.err)
		return
	}
	if err := authorize(p, rt.right); err != nil {
		h.writeError(req, err)
		return
	}
	if err := rt.handle(h, req); err != nil {
		h.writeError(req, err)
	}
}
