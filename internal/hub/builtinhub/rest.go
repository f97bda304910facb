package builtinhub

import (
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/sas"
)

// maxRESTBody bounds a request body; twins are at most a few tens of KiB.
const maxRESTBody = 256 << 10

// serveREST is the hub's service REST API: the identity registry and
// twins as the Azure SDKs' service clients use them.
func (h *Hub) serveREST(rw http.ResponseWriter, r *http.Request) {
	reqID := httperr.NewTrackingID()
	// Every request is logged at debug with its answer's status.
	w := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
	start := time.Now()
	defer func() {
		h.log.Debug("hub request", "method", r.Method, "path", r.URL.Path, "status", w.status,
			"remote", r.RemoteAddr, "trackingId", reqID, "duration", time.Since(start))
	}()
	w.Header().Set("x-ms-request-id", reqID)
	if h.limiter != nil {
		if wait, ok := h.limiter.allow(h.now()); !ok {
			secs := max(1, int((wait+time.Second-1)/time.Second))
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			h.writeError(w, reqID, &azurehub.Error{StatusCode: http.StatusTooManyRequests, Code: azurehub.CodeThrottled, Message: "Too many requests; retry later."})
			return
		}
	}
	segs, err := pathSegments(r.URL.EscapedPath())
	if err != nil {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Malformed path."))
		return
	}
	if dr := h.deviceRoute(r.Method, segs); dr != nil {
		if err := h.authorizeDevice(r.Context(), r, segs[1]); err != nil {
			h.writeError(w, reqID, err)
			return
		}
		dr(w, r, reqID, segs)
		return
	}
	route, right := h.route(r.Method, segs)
	if route == nil {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusNotFound, "NotFound", "No such resource: %s %s", r.Method, r.URL.Path))
		return
	}
	if err := h.authorizeService(r, right); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	route(w, r, reqID, segs)
}

type restHandler func(w http.ResponseWriter, r *http.Request, reqID string, segs []string)

// route picks the handler of a request and the policy right it needs.
func (h *Hub) route(method string, segs []string) (restHandler, Right) {
	switch {
	case len(segs) == 1 && segs[0] == "devices" && method == http.MethodGet:
		return h.restListDevices, RightRegistryRead
	case len(segs) == 1 && segs[0] == "devices" && method == http.MethodPost:
		return h.restBulkDevices, RightRegistryWrite
	case len(segs) == 2 && segs[0] == "statistics" && segs[1] == "devices" && method == http.MethodGet:
		return h.restStatistics, RightRegistryRead
	case len(segs) == 2 && segs[0] == "devices":
		switch method {
		case http.MethodGet:
			return h.restGetDevice, RightRegistryRead
		case http.MethodPut:
			return h.restPutDevice, RightRegistryWrite
		case http.MethodDelete:
			return h.restDeleteDevice, RightRegistryWrite
		}
	case len(segs) == 2 && segs[0] == "twins":
		switch method {
		case http.MethodGet:
			return h.restGetTwin, RightServiceConnect
		case http.MethodPatch, http.MethodPut:
			return h.restWriteTwin, RightServiceConnect
		}
	case len(segs) == 3 && segs[0] == "twins" && segs[2] == "methods" && method == http.MethodPost:
		return h.restInvokeMethod, RightServiceConnect
	case len(segs) == 3 && segs[0] == "devices" && segs[2] == "modules" && method == http.MethodGet:
		return h.restListModules, RightRegistryRead
	case len(segs) == 4 && segs[0] == "devices" && segs[2] == "modules":
		switch method {
		case http.MethodGet:
			return h.restGetModule, RightRegistryRead
		case http.MethodPut:
			return h.restPutModule, RightRegistryWrite
		case http.MethodDelete:
			return h.restDeleteModule, RightRegistryWrite
		}
	case len(segs) == 5 && segs[0] == "twins" && segs[2] == "modules" && segs[4] == "methods" && method == http.MethodPost:
		return h.restInvokeModuleMethod, RightServiceConnect
	case len(segs) == 4 && segs[0] == "twins" && segs[2] == "modules":
		switch method {
		case http.MethodGet:
			return h.restGetModuleTwin, RightServiceConnect
		case http.MethodPatch, http.MethodPut:
			return h.restWriteModuleTwin, RightServiceConnect
		}
	}
	return nil, ""
}

// pathSegments splits an escaped path and unescapes each segment, so that
// device ids with '/'-free but escaped characters ('#', '?', '%') survive.
func pathSegments(p string) ([]string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, err
		}
		parts[i] = u
	}
	return parts, nil
}

// authorizeService checks the request's shared access signature against
// the hub's policies (recipe of iothub-surface.md §1.5).
func (h *Hub) authorizeService(r *http.Request, need Right) error {
	unauthorized := func(format string, args ...any) error {
		return azurehub.Errorf(http.StatusUnauthorized, azurehub.CodeUnauthorized, format, args...)
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return unauthorized("The request has no Authorization header.")
	}
	tok, err := sas.Parse(auth)
	if err != nil {
		return unauthorized("Malformed SharedAccessSignature: %v", err)
	}
	if tok.ExpiredAt(h.now()) {
		return unauthorized("The SharedAccessSignature has expired.")
	}
	if tok.KeyName == "" {
		return unauthorized("The SharedAccessSignature names no policy (skn).")
	}
	pol, ok := h.cfg.policy(tok.KeyName)
	if !ok {
		return unauthorized("Unknown shared access policy %q.", tok.KeyName)
	}
	if tok.VerifyAny(decodeKey(pol.PrimaryKey), decodeKey(pol.SecondaryKey)) < 0 {
		return unauthorized("The SharedAccessSignature does not verify.")
	}
	res, err := tok.DecodedResource()
	if err != nil || !h.audienceOK(res, r.URL.Path) {
		return unauthorized("The SharedAccessSignature is for %q, not this hub.", tok.Resource)
	}
	if !pol.has(need) && !(need == RightServiceConnect && r.Method == http.MethodGet && pol.has(RightRegistryRead)) {
		return azurehub.Errorf(http.StatusUnauthorized, azurehub.CodeUnauthorized, "Policy %q lacks the %s right.", pol.KeyName, need)
	}
	return nil
}

// audienceOK reports whether a token's resource covers path: it must be
// one of the hub's names, optionally followed by a segment-wise prefix of
// the path.
func (h *Hub) audienceOK(res, path string) bool {
	host, rest, _ := strings.Cut(res, "/")
	if !h.isAlias(host) {
		return false
	}
	if rest == "" {
		return true
	}
	rest = "/" + strings.ToLower(strings.TrimSuffix(rest, "/"))
	p := strings.ToLower(path)
	return p == rest || strings.HasPrefix(p, rest+"/")
}

// isAlias reports whether name is a name clients may use for the hub: its
// host name or its address, with or without the port.
func (h *Hub) isAlias(name string) bool {
	name = strings.ToLower(name)
	for _, a := range h.aliases() {
		if name == strings.ToLower(a) {
			return true
		}
	}
	return false
}

func (h *Hub) restListDevices(w http.ResponseWriter, r *http.Request, reqID string, _ []string) {
	top := 1000
	if s := r.URL.Query().Get("top"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 && n < top {
			top = n
		}
	}
	var all []*azurehub.Device
	after := ""
	for len(all) < top {
		page, more, err := h.ListDevices(r.Context(), after, min(100, top-len(all)))
		if err != nil {
			h.writeError(w, reqID, err)
			return
		}
		all = append(all, page...)
		if !more || len(page) == 0 {
			break
		}
		after = page[len(page)-1].DeviceID
	}
	if all == nil {
		all = []*azurehub.Device{}
	}
	writeJSON(w, http.StatusOK, "", all)
}

// restBulkDevices is the bulk registry operation: it answers 200 with
// isSuccessful and the failed devices, as Azure does, and 400 only for a
// request that is wrong as a whole.
func (h *Hub) restBulkDevices(w http.ResponseWriter, r *http.Request, reqID string, _ []string) {
	var in []BulkDevice
	if err := readJSONLimit(r, &in, maxBulkBody); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	res, err := h.BulkDevices(r.Context(), in)
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, "", res)
}

// maxStatisticsDevices bounds the devices GET /statistics/devices counts:
// it is what other dpsd instances call to check the hub's health, and must
// stay cheap whatever the hub holds. Beyond it the counts are a floor.
const maxStatisticsDevices = 10000

func (h *Hub) restStatistics(w http.ResponseWriter, r *http.Request, reqID string, _ []string) {
	var st azurehub.RegistryStatistics
	after := ""
	for st.TotalDeviceCount < maxStatisticsDevices {
		page, more, err := h.ListDevices(r.Context(), after, 1000)
		if err != nil {
			h.writeError(w, reqID, err)
			return
		}
		for _, d := range page {
			st.TotalDeviceCount++
			if strings.EqualFold(d.Status, "disabled") {
				st.DisabledDeviceCount++
			} else {
				st.EnabledDeviceCount++
			}
		}
		if !more || len(page) == 0 {
			break
		}
		after = page[len(page)-1].DeviceID
	}
	writeJSON(w, http.StatusOK, "", &st)
}

func (h *Hub) restGetDevice(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	d, err := h.GetDevice(r.Context(), segs[1])
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, d.ETag, d)
}

func (h *Hub) restPutDevice(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in azurehub.Device
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	if in.DeviceID == "" {
		in.DeviceID = segs[1]
	}
	if in.DeviceID != segs[1] {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The device id in the body (%q) differs from the one in the path (%q).", in.DeviceID, segs[1]))
		return
	}
	// The Node SDK's create sends no If-Match and relies on 409 for an
	// existing device; its update always sends "*" (iothub-surface.md §1.3).
	var d *azurehub.Device
	var err error
	if m := enroll.NormalizeETag(r.Header.Get("If-Match")); m == "" {
		d, err = h.CreateDevice(r.Context(), &in)
	} else {
		d, err = h.UpdateDevice(r.Context(), &in, m)
	}
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, d.ETag, d)
}

func (h *Hub) restDeleteDevice(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	if err := h.DeleteDevice(r.Context(), segs[1], r.Header.Get("If-Match")); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Hub) restGetTwin(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	t, err := h.GetTwin(r.Context(), segs[1])
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, t.ETag, t)
}

func (h *Hub) restWriteTwin(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in azurehub.Twin
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	m := r.Header.Get("If-Match")
	var t *azurehub.Twin
	var err error
	if r.Method == http.MethodPut {
		t, err = h.ReplaceTwin(r.Context(), segs[1], &in, m)
	} else {
		t, err = h.UpdateTwin(r.Context(), segs[1], &in, m)
	}
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, t.ETag, t)
}

func (h *Hub) restListModules(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	mods, err := h.ListModules(r.Context(), segs[1])
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, "", mods)
}

func (h *Hub) restGetModule(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	m, err := h.GetModule(r.Context(), segs[1], segs[3])
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, m.ETag, m)
}

// restPutModule creates a module, or with If-Match updates it, as
// restPutDevice does for devices.
func (h *Hub) restPutModule(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in azurehub.Module
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	if in.DeviceID == "" {
		in.DeviceID = segs[1]
	}
	if in.ModuleID == "" {
		in.ModuleID = segs[3]
	}
	if in.DeviceID != segs[1] || in.ModuleID != segs[3] {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The device and module ids in the body (%q, %q) differ from those in the path (%q, %q).", in.DeviceID, in.ModuleID, segs[1], segs[3]))
		return
	}
	var m *azurehub.Module
	var err error
	if etag := enroll.NormalizeETag(r.Header.Get("If-Match")); etag == "" {
		m, err = h.CreateModule(r.Context(), &in)
	} else {
		m, err = h.UpdateModule(r.Context(), &in, etag)
	}
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, m.ETag, m)
}

func (h *Hub) restDeleteModule(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	if err := h.DeleteModule(r.Context(), segs[1], segs[3], r.Header.Get("If-Match")); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Hub) restGetModuleTwin(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	t, err := h.GetModuleTwin(r.Context(), segs[1], segs[3])
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, t.ETag, t)
}

func (h *Hub) restWriteModuleTwin(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in azurehub.Twin
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	m := r.Header.Get("If-Match")
	var t *azurehub.Twin
	var err error
	if r.Method == http.MethodPut {
		t, err = h.ReplaceModuleTwin(r.Context(), segs[1], segs[3], &in, m)
	} else {
		t, err = h.UpdateModuleTwin(r.Context(), segs[1], segs[3], &in, m)
	}
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, t.ETag, t)
}

// MethodRequest is the body of a direct method invocation.
type MethodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload,omitempty"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds,omitempty"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds,omitempty"`
}

// MethodResult is what the device answered.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

func (h *Hub) restInvokeMethod(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in MethodRequest
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	res, err := h.InvokeMethod(r.Context(), segs[1], &in)
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, "", res)
}

func (h *Hub) restInvokeModuleMethod(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	var in MethodRequest
	if err := readJSON(r, &in); err != nil {
		h.writeError(w, reqID, err)
		return
	}
	res, err := h.InvokeModuleMethod(r.Context(), segs[1], segs[3], &in)
	if err != nil {
		h.writeError(w, reqID, err)
		return
	}
	writeJSON(w, http.StatusOK, "", res)
}

func readJSON(r *http.Request, v any) error { return readJSONLimit(r, v, maxRESTBody) }

func readJSONLimit(r *http.Request, v any, limit int64) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Reading the body failed: %v", err)
	}
	if int64(len(data)) > limit {
		return azurehub.Errorf(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The body exceeds %d bytes.", limit)
	}
	if err := decodeJSON(data, v); err != nil {
		return azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The body is not valid JSON: %v", err)
	}
	return nil
}

// writeJSON answers with v and, for single-resource answers, the quoted
// ETag header real hubs send.
func writeJSON(w http.ResponseWriter, status int, etag string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if etag != "" {
		w.Header().Set("ETag", `"`+etag+`"`)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError answers in the hub REST error shape that the Azure SDKs parse:
// {"Message":"ErrorCode:{code};{text}","ExceptionMessage":"Tracking ID:…"}.
func (h *Hub) writeError(w http.ResponseWriter, reqID string, err error) {
	var he *azurehub.Error
	var sf *storeFailure
	switch {
	case errors.As(err, &sf):
		he = sf.he
		if he.StatusCode == http.StatusServiceUnavailable {
			h.log.Warn("hub store unavailable", "hub", h.cfg.Name, "err", sf.err, "trackingId", reqID)
		} else {
			h.log.Error("hub request failed", "hub", h.cfg.Name, "err", sf.err, "trackingId", reqID)
		}
	case !errors.As(err, &he):
		h.log.Error("hub request failed", "hub", h.cfg.Name, "err", err, "trackingId", reqID)
		he = azurehub.Errorf(http.StatusInternalServerError, azurehub.CodeServerError, "Internal error (tracking id %s).", reqID)
	}
	if he.RetryAfter > 0 && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", strconv.Itoa(int((he.RetryAfter+time.Second-1)/time.Second)))
	}
	body := map[string]string{
		"Message":          fmt.Sprintf("ErrorCode:%s;%s", he.Code, he.Message),
		"ExceptionMessage": fmt.Sprintf("Tracking ID:%s-G:0-TimeStamp:%s", reqID, h.now().UTC().Format("01/02/2006 15:04:05")),
	}
	writeJSON(w, he.StatusCode, "", body)
}

// limiter is a token bucket throttling a hub's REST API, as real hubs do.
type limiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	if rate <= 0 {
		return nil
	}
	b := float64(max(burst, 1))
	return &limiter{rate: rate, burst: b, tokens: b}
}

// allow takes a token, or says how long until one is available.
func (l *limiter) allow(now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return 0, true
	}
	return time.Duration((1 - l.tokens) / l.rate * float64(time.Second)), false
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// CheckKey reports whether key is a current key (primary or secondary)
// of the hub's shared access policy keyName with the rights dpsd's hub
// registrar needs (RegistryWrite and ServiceConnect), so that a linked
// hub's rotated connection string can be checked before it is saved.
func (h *Hub) CheckKey(keyName, key string) error {
	pol, ok := h.cfg.policy(keyName)
	if !ok {
		return fmt.Errorf("hub %s has no shared access policy %q", h.cfg.HostName, keyName)
	}
	k := decodeKey(key)
	if k == nil || (!hmac.Equal(k, decodeKey(pol.PrimaryKey)) && !hmac.Equal(k, decodeKey(pol.SecondaryKey))) {
		return fmt.Errorf("the key is neither key of the policy %q of hub %s", pol.KeyName, h.cfg.HostName)
	}
	if !pol.has(RightRegistryWrite) || !pol.has(RightServiceConnect) {
		return fmt.Errorf("the policy %q of hub %s lacks RegistryWrite or ServiceConnect", pol.KeyName, h.cfg.HostName)
	}
	return nil
}
