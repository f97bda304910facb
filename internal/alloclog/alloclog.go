package alloclog

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/store"
)

// Kind is the store collection of allocation logs, one record per
// registration id.
const Kind = store.KindAllocationLog

// Bounds of what is kept.
const (
	// MaxEntries is how many allocations are kept per registration.
	MaxEntries = 20
	// MaxRecordBytes bounds one registration's log; older entries are
	// dropped first to stay under it (the newest is always kept).
	MaxRecordBytes = 256 << 10
	// MaxRequestBytes bounds the stored copy of a webhook request.
	MaxRequestBytes = 8 << 10
	// MaxBodyBytes bounds the stored copy of each accepted webhook
	// answer's body.
	MaxBodyBytes = 2 << 10
	// MaxWebhookTextBytes bounds what is kept of an answer that was not
	// accepted: enough for a refusal's reason, too little to read a
	// service back through a webhook URL pointed at it.
	MaxWebhookTextBytes = 200
)

// Outcomes of an entry.
const (
	OutcomeInProgress = admin.OutcomeInProgress
	OutcomeAssigned   = admin.OutcomeAssigned
	OutcomeFailed     = admin.OutcomeFailed
)

// Entry is the wire form of one allocation, defined in api/admin.
type Entry = admin.AllocationLogEntry

// Attempt is the wire form of one webhook call, defined in api/admin.
type Attempt = admin.AllocationAttempt

// record is the stored document.
type record struct {
	RegistrationID string  `json:"registrationId"`
	Entries        []Entry `json:"entries"`
}

// Log reads and writes allocation logs. It is safe for concurrent use and
// across nodes sharing the store (writes are compare-and-swap).
type Log struct {
	st  store.Store
	now func() time.Time
	log *slog.Logger
}

// Options configure a Log.
type Options struct {
	Now    func() time.Time
	Logger *slog.Logger
}

// New returns a log over st.
func New(st store.Store, opt Options) *Log {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Log{st: st, now: opt.Now, log: opt.Logger}
}

// List returns a registration's entries, oldest first; none (and no error)
// when the device was never allocated.
func (l *Log) List(ctx context.Context, registrationID string) ([]Entry, error) {
	r, _, err := l.get(ctx, registrationID)
	if err != nil {
		return nil, err
	}
	return r.Entries, nil
}

// Delete removes a registration's log, for when its registration record is
// deleted. A missing log is not an error.
func (l *Log) Delete(ctx context.Context, registrationID string) error {
	err := l.st.Delete(ctx, Kind, registrationID, store.Condition{})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete allocation log of %q: %w", registrationID, err)
	}
	return nil
}

// Begin starts an entry for one allocation and records the request sent.
// Recording never fails the allocation: store errors are logged, and the
// returned Recorder is always usable.
func (l *Log) Begin(ctx context.Context, registrationID, webhookURL string, request []byte) *Recorder {
	e := Entry{
		ID:             newID(),
		RegistrationID: registrationID,
		Started:        l.now().UTC(),
		WebhookURL:     webhookURL,
		Attempts:       []Attempt{},
		Outcome:        OutcomeInProgress,
	}
	e.Request, e.RequestTruncated = Clip(request, MaxRequestBytes)
	rec := &Recorder{l: l, e: e}
	rec.save(ctx)
	return rec
}

// Record writes a finished entry in one write: an allocation that called
// nothing (hashed, static, geoLatency), described by e. Its id and times
// are filled in; like Begin, it never fails the allocation.
func (l *Log) Record(ctx context.Context, e Entry) {
	l.Pending(e).Keep(ctx)
}

// Pending returns a finished entry, described by e with its id and times
// filled in now, for its writer to keep when it is ready: the provisioning
// engine commits it with the registration it explains (provision.Note).
func (l *Log) Pending(e Entry) *Pending {
	now := l.now().UTC()
	e.ID, e.Started, e.Finished = newID(), now, now
	if e.Attempts == nil {
		e.Attempts = []Attempt{}
	}
	return &Pending{l: l, e: e}
}

// Pending is an entry waiting to be written.
type Pending struct {
	l *Log
	e Entry
}

// Write returns the store write that adds the entry to its registration's
// log as it is stored now; the write's condition fails if the log changes
// before it commits.
func (p *Pending) Write(ctx context.Context) (store.Write, error) {
	return p.l.prepare(ctx, p.e)
}

// Keep writes the entry on its own, logging a failure.
func (p *Pending) Keep(ctx context.Context) {
	if err := p.l.upsert(ctx, p.e); err != nil {
		p.l.log.Warn("allocation log: recording failed", "registrationId", p.e.RegistrationID, "err", err)
	}
}

// Recorder fills one entry as an allocation proceeds. A nil *Recorder
// records nothing, so callers without a log need no checks.
type Recorder struct {
	l *Log
	e Entry
}

// Describe lets f fill the entry's description (policy, candidates,
// reprovisioning); it is written with the next Waiting or Finish.
func (r *Recorder) Describe(f func(*Entry)) {
	if r == nil || f == nil {
		return
	}
	f(&r.e)
}

// ID is the entry's id ("" for a nil Recorder).
func (r *Recorder) ID() string {
	if r == nil {
		return ""
	}
	return r.e.ID
}

// Attempt records one call of the webhook. It is written with the next
// Waiting or Finish, to spare the store a write per attempt.
func (r *Recorder) Attempt(_ context.Context, a Attempt) {
	if r == nil {
		return
	}
	a.Started = a.Started.UTC()
	r.e.Attempts = append(r.e.Attempts, a)
	r.e.Retries = len(r.e.Attempts) - 1
}

// Waiting records the wait before the next attempt on the latest attempt,
// and writes the entry so far.
func (r *Recorder) Waiting(ctx context.Context, d time.Duration) {
	if r == nil || len(r.e.Attempts) == 0 {
		return
	}
	r.e.Attempts[len(r.e.Attempts)-1].RetryAfterMs = d.Milliseconds()
	r.save(ctx)
}

// Finish records the outcome: the hub assigned, or the error code and
// message the registration failed with.
func (r *Recorder) Finish(ctx context.Context, hub string, errorCode int, errorMessage string) {
	if r == nil {
		return
	}
	r.e.Finished = r.l.now().UTC()
	r.e.DurationMs = r.e.Finished.Sub(r.e.Started).Milliseconds()
	if errorCode != 0 {
		r.e.Outcome, r.e.ErrorCode, r.e.ErrorMessage = OutcomeFailed, errorCode, errorMessage
	} else {
		r.e.Outcome, r.e.Hub = OutcomeAssigned, hub
	}
	r.save(ctx)
}

// Entry returns a copy of the entry as recorded so far.
func (r *Recorder) Entry() Entry {
	if r == nil {
		return Entry{}
	}
	e := r.e
	e.Attempts = append([]Attempt(nil), r.e.Attempts...)
	return e
}

// save writes the entry into the registration's record, replacing an older
// version of itself, with bounded retries when another writer wins.
func (r *Recorder) save(ctx context.Context) {
	if err := r.l.upsert(ctx, r.e); err != nil {
		r.l.log.Warn("allocation audit: recording failed", "registrationId", r.e.RegistrationID, "entry", r.e.ID, "err", err)
	}
}

func (l *Log) upsert(ctx context.Context, e Entry) error {
	for range 5 {
		w, err := l.prepare(ctx, e)
		if err != nil {
			return err
		}
		_, err = l.st.Put(ctx, w.Record, w.Cond)
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPrecondition) {
			continue
		}
		if err != nil {
			return fmt.Errorf("save allocation log of %q: %w", e.RegistrationID, err)
		}
		return nil
	}
	return fmt.Errorf("save allocation log of %q: too many concurrent writers", e.RegistrationID)
}

// prepare returns the write that puts e (new, or replacing the entry with
// its id) into its registration's log as stored now, conditioned on that.
func (l *Log) prepare(ctx context.Context, e Entry) (store.Write, error) {
	r, etag, err := l.get(ctx, e.RegistrationID)
	if err != nil {
		return store.Write{}, err
	}
	replaced := false
	for i := range r.Entries {
		if r.Entries[i].ID == e.ID {
			r.Entries[i], replaced = e, true
		}
	}
	if !replaced {
		r.Entries = append(r.Entries, e)
	}
	if len(r.Entries) > MaxEntries {
		r.Entries = r.Entries[len(r.Entries)-MaxEntries:]
	}
	r.RegistrationID = e.RegistrationID
	data, err := encodeBounded(r)
	if err != nil {
		return store.Write{}, err
	}
	cond := store.Condition{MustNotExist: true}
	if etag != "" {
		cond = store.Condition{IfMatch: etag}
	}
	return store.Write{Record: store.Record{Kind: Kind, ID: e.RegistrationID, Data: data}, Cond: cond}, nil
}

// encodeBounded drops the oldest entries until the record fits
// MaxRecordBytes, always keeping the newest. Each entry is encoded once.
func encodeBounded(r *record) ([]byte, error) {
	id, err := json.Marshal(r.RegistrationID)
	if err != nil {
		return nil, fmt.Errorf("encode allocation log: %w", err)
	}
	enc := make([][]byte, len(r.Entries))
	size := len(`{"registrationId":,"entries":[]}`) + len(id)
	for i := range r.Entries {
		if enc[i], err = json.Marshal(&r.Entries[i]); err != nil {
			return nil, fmt.Errorf("encode allocation log: %w", err)
		}
		size += len(enc[i]) + 1 // and a comma
	}
	first := 0
	for size > MaxRecordBytes && first < len(enc)-1 {
		size -= len(enc[first]) + 1
		first++
	}
	r.Entries = r.Entries[first:]
	var b bytes.Buffer
	b.Grow(size)
	b.WriteString(`{"registrationId":`)
	b.Write(id)
	b.WriteString(`,"entries":[`)
	for i, e := range enc[first:] {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e)
	}
	b.WriteString(`]}`)
	return b.Bytes(), nil
}

func (l *Log) get(ctx context.Context, registrationID string) (*record, string, error) {
	rec, err := l.st.Get(ctx, Kind, registrationID)
	if errors.Is(err, store.ErrNotFound) {
		return &record{RegistrationID: registrationID, Entries: []Entry{}}, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read allocation log of %q: %w", registrationID, err)
	}
	var r record
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return nil, "", fmt.Errorf("decode allocation log of %q: %w", registrationID, err)
	}
	if r.Entries == nil {
		r.Entries = []Entry{}
	}
	return &r, rec.ETag, nil
}

// Clip returns b as stored in the log: b itself when it is valid JSON of at
// most max bytes, otherwise a JSON string holding its first max bytes (cut
// at a character boundary), with truncated reporting whether it was cut.
func Clip(b []byte, max int) (v json.RawMessage, truncated bool) {
	if len(b) == 0 {
		return nil, false
	}
	if len(b) <= max && json.Valid(b) {
		return append(json.RawMessage(nil), b...), false
	}
	if len(b) > max {
		b, truncated = b[:max], true
		// Do not split a UTF-8 sequence: back up to a rune start.
		for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
			b = b[:len(b)-1]
		}
	}
	s, _ := json.Marshal(string(b))
	return s, truncated
}

// newID returns a random entry id.
func newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("audit: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// WebhookText returns what the log keeps of an answer that was not
// accepted: its first MaxWebhookTextBytes bytes (cut at a character
// boundary) as text, invalid UTF-8 and control characters but for
// newlines and tabs replaced with U+FFFD, and whether it was cut.
func WebhookText(b []byte) (text string, truncated bool) {
	if len(b) > MaxWebhookTextBytes {
		b, truncated = b[:MaxWebhookTextBytes], true
		for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
			b = b[:len(b)-1]
		}
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\n' && r != '\t') {
			r = utf8.RuneError
		}
		sb.WriteRune(r)
	}
	return sb.String(), truncated
}
