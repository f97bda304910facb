package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Kind names a collection of records.
type Kind string

// The kinds dpsd stores.
const (
	KindConfig          Kind = "config"          // instance settings: id scope, access policies
	KindEnrollment      Kind = "enrollment"      // dps.IndividualEnrollment, with keys
	KindEnrollmentGroup Kind = "enrollmentGroup" // dps.EnrollmentGroup, with keys
	KindRegistration    Kind = "registration"    // registration record; Ref = enrollment group id
)

// Record is one stored document.
type Record struct {
	Kind Kind
	ID   string // as first written; lookups ignore case
	// Ref is an optional secondary key that List can filter on (for example
	// the enrollment group of a registration). Compared case-insensitively.
	Ref     string
	Data    []byte // JSON document
	ETag    string // opaque, new on every write; set by the store
	Created time.Time
	Updated time.Time
}

// Condition guards a write.
type Condition struct {
	// MustNotExist makes Put fail with ErrExists if the record exists.
	MustNotExist bool
	// IfMatch, when not empty, makes Put and Delete fail with ErrPrecondition
	// unless the record exists with this etag; "*" matches any existing record.
	IfMatch string
}

// Errors every implementation returns (possibly wrapped).
var (
	ErrNotFound     = errors.New("store: not found")
	ErrExists       = errors.New("store: already exists")
	ErrPrecondition = errors.New("store: etag does not match")
	// ErrUnavailable means the database cannot be reached; callers answer
	// 503 with Retry-After rather than a wrong result.
	ErrUnavailable = errors.New("store: unavailable")
)

// ListOptions selects and pages records. Records come in order of their
// lower-cased id.
type ListOptions struct {
	Ref   string // when not empty, only records with this Ref
	After string // continue after this id (exclusive), from a previous page
	Limit int    // at most this many; 0 means the store's default (100)
}

// DefaultListLimit is the page size when ListOptions.Limit is 0.
const DefaultListLimit = 100

// Store is what dpsd needs from a database.
type Store interface {
	// Get returns the record or ErrNotFound.
	Get(ctx context.Context, kind Kind, id string) (Record, error)
	// Put creates or replaces rec under cond and returns it as stored, with
	// its new etag and times. Created is kept from the existing record.
	Put(ctx context.Context, rec Record, cond Condition) (Record, error)
	// Delete removes a record; ErrNotFound if absent, ErrPrecondition if
	// cond.IfMatch does not match. MustNotExist is ignored.
	Delete(ctx context.Context, kind Kind, id string, cond Condition) error
	// List returns a page of records and whether more follow.
	List(ctx context.Context, kind Kind, opt ListOptions) (recs []Record, more bool, err error)
	// Close releases the database.
	Close() error
}

// Notifier is implemented by stores shared by several dpsd nodes. A node
// caches some records (the enrollment groups it verifies devices against,
// the linked hubs it allocates to) and drops its copy at once when it
// writes one itself; Changes lets it do the same for writes made by the
// other nodes, instead of serving stale data until the copy expires.
//
// Changes delivers the kind of records written by any node, this one
// included, until ctx ends or the store is closed; then it closes the
// channel. It delivers only the kinds the store watches (those nodes
// cache), and coalesces: a kind written many times while the receiver was
// busy arrives once, so a slow receiver delays but never loses a change. A
// kind arrives only after the write committed, so reading it then finds
// the new data. Whenever the store starts watching, and again each time
// it watches anew after losing its connection, it delivers every watched
// kind, since anything may have changed meanwhile; the receiver therefore
// never needs to know whether it was listening.
type Notifier interface {
	Changes(ctx context.Context) (<-chan Kind, error)
}

// Write is one write of a batch a Batcher applies atomically.
type Write struct {
	// Delete removes the record Record.Kind and Record.ID name; otherwise
	// the write puts Record.
	Delete bool
	Record Record
	Cond   Condition
}

// Batcher is implemented by stores that can commit several writes as one:
// a registration record together with the built-in hub identity it names,
// for example, so that neither is ever durable without the other, at the
// cost of one commit instead of several.
type Batcher interface {
	// Apply performs writes in order in one transaction, each seeing the
	// effects of those before it, and commits all of them or none. When a
	// write's condition fails, nothing is written and the error is a
	// *BatchError naming that write and wrapping ErrExists,
	// ErrPrecondition or ErrNotFound. On success it returns the records as
	// stored, in the order of writes (zero Records for deletes).
	Apply(ctx context.Context, writes []Write) ([]Record, error)
}

// BatchError reports the write whose condition failed a batch.
type BatchError struct {
	Index int // into the writes given to Apply
	Kind  Kind
	ID    string
	Err   error // ErrExists, ErrPrecondition or ErrNotFound
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("batch write %d (%s %q): %v", e.Index, e.Kind, e.ID, e.Err)
}

func (e *BatchError) Unwrap() error { return e.Err }

// CheckWrites reports a batch with a write that names no kind or id, for
// Batchers to refuse before touching the database.
func CheckWrites(writes []Write) error {
	for i, w := range writes {
		if w.Record.Kind == "" || w.Record.ID == "" {
			return fmt.Errorf("batch write %d: empty kind or id (%q, %q)", i, w.Record.Kind, w.Record.ID)
		}
	}
	return nil
}

// MaxBroadcast bounds the payload of one Broadcast: PostgreSQL's NOTIFY
// takes under 8,000 bytes, with room left for the envelope.
const MaxBroadcast = 7000

// Broadcaster is implemented by stores shared by several nodes, to tell
// the other nodes of an event that concerns what they hold in memory
// rather than in the store: a cloud-to-device message queued for a device
// connected to another node, say. Delivery is best effort: a message is
// lost when no node listens, and a receiver that falls behind, or whose
// listening connection broke, gets an empty message instead of what it
// missed, meaning "anything may have happened: look at the store".
type Broadcaster interface {
	// Broadcast sends msg (at most MaxBroadcast bytes) to every node
	// listening, this one included.
	Broadcast(ctx context.Context, msg []byte) error
	// Broadcasts delivers the messages broadcast by any node until ctx
	// ends or the store is closed; then it closes the channel. Its first
	// message, and the first after each reconnection, is empty.
	Broadcasts(ctx context.Context) (<-chan []byte, error)
}
