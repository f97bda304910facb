package refusal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// Error is an answer for the device with the reason the operator is told.
// It unwraps to the answer, so every error writer sends the answer
// unchanged.
type Error struct {
	Answer *dps.Error
	Reason string
}

// Because returns answer with a reason for the log, formatted.
func Because(answer *dps.Error, format string, args ...any) error {
	return &Error{Answer: answer, Reason: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return e.Answer.Error() + ": " + e.Reason }

// Unwrap returns the answer.
func (e *Error) Unwrap() error { return e.Answer }

// Reason is why err refused a request: the reason attached by Because, the
// message of a *dps.Error, or err's text.
func Reason(err error) string {
	var re *Error
	if errors.As(err, &re) {
		return re.Reason
	}
	var de *dps.Error
	if errors.As(err, &de) {
		return de.Message
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// DefaultSize is how many refusals a Log keeps when not told.
const DefaultSize = 1000

// maxField bounds every string a refusal keeps: registration ids and scopes
// come from devices.
const maxField = 512

// Options configure a Log.
type Options struct {
	// Size is how many refusals are kept, the oldest dropped first; 0
	// means DefaultSize.
	Size   int
	Logger *slog.Logger
	Now    func() time.Time

	// Store, when set, is a store shared by several nodes: refusals are
	// also written there (by Run, in the background) and Find looks there
	// too, so that any node finds a refusal by tracking or registration id
	// whichever node refused the request. A node alone needs none.
	Store store.Store
	// Node names this node in the refusals it stores.
	Node string
	// StoreMax and StoreMaxAge bound what the store keeps (all nodes
	// together); 0 means DefaultStoreMax and DefaultStoreMaxAge.
	StoreMax    int
	StoreMaxAge time.Duration
}

// Log logs refused device requests and keeps the latest ones. It is safe
// for concurrent use. Each node keeps its own.
type Log struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	ring []admin.Refusal
	next int // where the next refusal goes
	full bool

	shared *shared // nil without Options.Store
}

// New returns a Log.
func New(opt Options) *Log {
	if opt.Size <= 0 {
		opt.Size = DefaultSize
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	l := &Log{log: opt.Logger, now: opt.Now, ring: make([]admin.Refusal, opt.Size)}
	if opt.Store != nil {
		l.shared = newShared(opt)
	}
	return l
}

// Request describes the refused request.
type Request struct {
	Transport      string
	Operation      string
	IDScope        string
	RegistrationID string
	RemoteAddr     string
}

// Record logs one refused request once — at info for a refusal (4xx),
// at error for a failure on dpsd's side (5xx) — and keeps it. answer is
// what the device was told (with its tracking id); err is what refused
// it, whose Reason the device was not told.
func (l *Log) Record(ctx context.Context, req Request, answer *dps.Error, err error) {
	r := admin.Refusal{
		TrackingID:     answer.TrackingID,
		Time:           l.now().UTC(),
		RegistrationID: clip(req.RegistrationID),
		IDScope:        clip(req.IDScope),
		Transport:      req.Transport,
		Operation:      req.Operation,
		ErrorCode:      answer.ErrorCode,
		ErrorMessage:   clip(answer.Message),
		Reason:         clip(Reason(err)),
		RemoteAddr:     req.RemoteAddr,
	}
	if l.shared != nil {
		r.Node = l.shared.node
	}
	level, msg := slog.LevelInfo, "device request refused"
	if answer.Status() >= http.StatusInternalServerError {
		level, msg = slog.LevelError, "device request failed"
	}
	l.log.Log(ctx, level, msg,
		"trackingId", r.TrackingID, "registrationId", r.RegistrationID, "transport", r.Transport,
		"op", r.Operation, "errorCode", r.ErrorCode, "reason", r.Reason, "remoteAddr", r.RemoteAddr)

	l.mu.Lock()
	l.ring[l.next] = r
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	l.mu.Unlock()
	l.shared.enqueue(r)
}

// Find returns the kept refusals of registrationID (case-insensitive) and
// with trackingID, newest first; an empty filter matches everything. At
// most limit are returned (0: all kept). With a shared store, a search by
// registration or tracking id also finds what the other nodes refused;
// a search without either returns this node's only.
func (l *Log) Find(ctx context.Context, registrationID, trackingID string, limit int) ([]admin.Refusal, error) {
	local := l.findLocal(registrationID, trackingID, limit)
	if l.shared == nil || (registrationID == "" && trackingID == "") {
		return local, nil
	}
	stored, err := l.shared.find(ctx, registrationID, trackingID)
	if err != nil {
		return local, err
	}
	return merge(local, stored, limit), nil
}

// findLocal is Find over this node's ring.
func (l *Log) findLocal(registrationID, trackingID string, limit int) []admin.Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.next
	if l.full {
		n = len(l.ring)
	}
	out := []admin.Refusal{}
	for i := 1; i <= n; i++ {
		r := l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		if registrationID != "" && !strings.EqualFold(r.RegistrationID, registrationID) {
			continue
		}
		if trackingID != "" && !strings.EqualFold(r.TrackingID, trackingID) {
			continue
		}
		out = append(out, r)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

// clip bounds s to maxField bytes, at a character boundary.
func clip(s string) string {
	if len(s) <= maxField {
		return s
	}
	s = s[:maxField]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
