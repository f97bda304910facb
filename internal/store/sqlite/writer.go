package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpsd/dpsd/internal/store"
)

// maxBatch caps how many writes share one transaction, which bounds the
// latency a write waits behind others in its batch.
const maxBatch = 256

// maxLinger bounds how long a batch waits for company (see gather). A
// durable commit costs the writer a fixed part of its CPU (the fsync, the
// WAL frames of the pages the batch touched) whatever the batch holds, so
// under load fuller batches leave more CPU for everything else; a
// millisecond is small beside the commit's own latency and the network's.
const maxLinger = time.Millisecond

// Life cycle of an op: the caller queues it; exactly one of the writer
// (taking it into a batch) and the caller (abandoning it when its context
// ends) moves it out of queued.
const (
	opQueued int32 = iota
	opTaken
	opAbandoned
)

// op is one Put, Delete or Apply waiting for the writer.
type op struct {
	ctx  context.Context
	put  bool // else delete
	rec  store.Record
	cond store.Condition
	// group, when not nil, makes the op an Apply: these writes, all or
	// none (put, rec and cond are unused).
	group []store.Write

	state atomic.Int32
	done  chan result // buffered; the writer never blocks answering
}

type result struct {
	rec  store.Record
	recs []store.Record // of a group, in its order
	err  error
}

// writer owns the single write connection and commits queued ops in
// batches.
type writer struct {
	conn   *sql.Conn
	ops    chan *op
	idx    *keyIndex     // kept up to date with every batch; nil if none
	linger time.Duration // maxLinger, or another in tests

	commits atomic.Int64 // batches committed, for tests

	// mu guards closed and orders it against sends on ops, so nothing is
	// sent on ops after it is closed.
	mu     sync.RWMutex
	closed bool
	exited chan struct{}

	sel, ins, insNew, upd, del *sql.Stmt
	// The transaction around a batch, prepared once like the rest: parsing
	// them anew cost about 1 % of the process's CPU under load.
	begin, commitTx *sql.Stmt
	// The savepoint around an Apply's writes, prepared once: compiling
	// them for every group cost as much as one of its writes.
	savepoint, release, rollbackTo *sql.Stmt
	// insRows[n] inserts n rows in one statement, for groups of creates;
	// prepared when first needed.
	insRows [maxCreateGroup + 1]*sql.Stmt
}

// maxCreateGroup is the largest group of creates written with one
// statement; larger ones go write by write.
const maxCreateGroup = 8

// insertColumns are the columns every insert writes, in order.
const insertColumns = "(kind, id_key, id, ref_key, ref, data, etag, created, updated)"

func startWriter(ctx context.Context, conn *sql.Conn, idx *keyIndex, linger time.Duration) (*writer, error) {
	w := &writer{conn: conn, ops: make(chan *op, maxBatch), idx: idx, linger: linger, exited: make(chan struct{})}
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&w.sel, "SELECT id, etag, created, updated FROM records WHERE kind = ? AND id_key = ?"},
		{&w.ins, "INSERT INTO records " + insertColumns + " VALUES " + insertRow},
		{&w.insNew, "INSERT INTO records " + insertColumns + " VALUES " + insertRow + " ON CONFLICT (kind, id_key) DO NOTHING"},
		{&w.begin, "BEGIN IMMEDIATE"},
		{&w.commitTx, "COMMIT"},
		{&w.savepoint, "SAVEPOINT apply"},
		{&w.release, "RELEASE apply"},
		{&w.rollbackTo, "ROLLBACK TO apply"},
		{&w.upd, "UPDATE records SET ref_key = ?, ref = ?, data = ?, etag = ?, updated = ? WHERE kind = ? AND id_key = ?"},
		{&w.del, "DELETE FROM records WHERE kind = ? AND id_key = ?"},
	} {
		var err error
		if *p.stmt, err = conn.PrepareContext(ctx, p.sql); err != nil {
			return nil, fmt.Errorf("prepare: %w", mapErr(err))
		}
	}
	go w.run()
	return w, nil
}

// do queues o and waits for its outcome.
func (w *writer) do(ctx context.Context, o *op) (store.Record, error) {
	r, err := w.doResult(ctx, o)
	return r.rec, err
}

// doResult is do with the whole result, for groups.
func (w *writer) doResult(ctx context.Context, o *op) (result, error) {
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	o.ctx = ctx
	o.done = make(chan result, 1)

	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return result{}, errClosed
	}
	select {
	case w.ops <- o:
	case <-ctx.Done():
		w.mu.RUnlock()
		return result{}, ctx.Err()
	}
	w.mu.RUnlock()

	select {
	case r := <-o.done:
		return r, r.err
	case <-ctx.Done():
		if o.state.CompareAndSwap(opQueued, opAbandoned) {
			return result{}, ctx.Err()
		}
		// The writer has it: the outcome is at most one commit away, and
		// reporting it (rather than ctx's error) keeps "error" meaning
		// "not written".
		r := <-o.done
		return r, r.err
	}
}

// close stops accepting writes, waits for queued ones to commit and
// releases the connection.
func (w *writer) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.ops)
	}
	w.mu.Unlock()
	<-w.exited
	for _, st := range []*sql.Stmt{w.sel, w.ins, w.insNew, w.upd, w.del, w.begin, w.commitTx, w.savepoint, w.release, w.rollbackTo} {
		st.Close()
	}
	for _, st := range w.insRows {
		if st != nil {
			st.Close()
		}
	}
	w.conn.Close()
}

func (w *writer) run() {
	defer close(w.exited)
	batch := make([]*op, 0, maxBatch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	last := 0 // size of the previous batch
	for o := range w.ops {
		batch = w.gather(append(batch[:0], o), last, linger)
		last = len(batch)
		w.process(batch)
	}
}

// gather adds to batch (which holds the op that woke the writer) what
// joins it before it commits: everything that queued up while the last
// batch (of size last) committed and, under load, what comes soon after.
//
// That is group commit, as PostgreSQL's commit_delay does it: when the
// last batch had company, about as many writers will come back for this
// one (each waits on a commit, then sends its next write), so the batch
// waits for them for up to w.linger. A lone writer, or a batch already as
// large as the last, commits at once. The timer is the writer's own,
// stopped between uses.
func (w *writer) gather(batch []*op, last int, linger *time.Timer) []*op {
fill:
	for len(batch) < maxBatch {
		select {
		case o, ok := <-w.ops:
			if !ok {
				break fill
			}
			batch = append(batch, o)
		default:
			break fill
		}
	}
	if w.linger <= 0 || last < 2 || len(batch) >= min(last, maxBatch) {
		return batch
	}
	linger.Reset(w.linger)
	defer linger.Stop()
	for len(batch) < min(last, maxBatch) {
		select {
		case o, ok := <-w.ops:
			if !ok {
				return batch
			}
			batch = append(batch, o)
		case <-linger.C:
			return batch
		}
	}
	return batch
}

// process commits a batch and answers every op in it.
func (w *writer) process(batch []*op) {
	live := batch[:0]
	for _, o := range batch {
		if !o.state.CompareAndSwap(opQueued, opTaken) {
			continue // its caller gave up and has returned
		}
		if err := o.ctx.Err(); err != nil {
			o.done <- result{err: err}
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	if w.idx != nil {
		// Before anything commits, and until every outcome is noted: see
		// keyIndex for why the index stays correct.
		w.idx.beginBatch(live)
		defer w.idx.endBatch()
	}
	results, err := w.commit(live)
	if err == nil {
		for i, o := range live {
			w.noteDelete(o, results[i])
			o.done <- results[i]
		}
		return
	}
	if len(live) == 1 || errors.Is(err, store.ErrUnavailable) {
		// The database itself failed (locked, full, I/O); retrying op by
		// op would fail the same way, one busy timeout at a time.
		slog.Error("sqlite store: write batch failed", "ops", len(live), "err", err)
		for _, o := range live {
			o.done <- result{err: err}
		}
		return
	}
	// One op's statement failed and took the batch down with it. Nothing
	// was committed, so each op is retried alone so that only the faulty
	// one fails.
	for _, o := range live {
		res, err := w.commit([]*op{o})
		if err != nil {
			o.done <- result{err: err}
			continue
		}
		w.noteDelete(o, res[0])
		o.done <- res[0]
	}
}

// noteDelete tells the index about committed deletes, so it knows how
// many of its hashes may be stale.
func (w *writer) noteDelete(o *op, r result) {
	if w.idx == nil || r.err != nil {
		return
	}
	if o.group != nil {
		for _, wr := range o.group {
			if wr.Delete {
				w.idx.deleted(wr.Record.Kind)
			}
		}
		return
	}
	if !o.put {
		w.idx.deleted(o.rec.Kind)
	}
}

// commit applies ops in order in one transaction. Ops see the effects of
// earlier ops in the same batch, so conditions behave exactly as if the ops
// had been committed one at a time. A condition failure is that op's
// result; an error from commit itself means nothing was written.
func (w *writer) commit(ops []*op) (results []result, err error) {
	// The batch serves many callers, so no single caller's context may
	// abort it; each caller's context was checked when the op was taken.
	ctx := context.Background()
	if _, err := w.begin.ExecContext(ctx); err != nil {
		return nil, fmt.Errorf("begin: %w", mapErr(err))
	}
	defer func() {
		if err != nil {
			// Also after a failed COMMIT, which can leave the transaction
			// open; the error of a ROLLBACK with no transaction is moot.
			_, _ = w.conn.ExecContext(ctx, "ROLLBACK")
		}
	}()
	results = make([]result, len(ops))
	for i, o := range ops {
		if o.group != nil {
			results[i], err = w.applyGroup(ctx, o.group)
		} else {
			results[i], err = w.apply(ctx, !o.put, o.rec, o.cond)
		}
		if err != nil {
			return nil, mapErr(err)
		}
	}
	if _, err := w.commitTx.ExecContext(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", mapErr(err))
	}
	w.commits.Add(1)
	return results, nil
}

// applyGroup performs the writes of an Apply inside the batch's
// transaction, under a savepoint, so that a failed condition undoes the
// group's earlier writes and nothing of the other ops of the batch.
func (w *writer) applyGroup(ctx context.Context, group []store.Write) (result, error) {
	if res, ok, err := w.createGroup(ctx, group); ok || err != nil {
		return res, err
	}
	if _, err := w.savepoint.ExecContext(ctx); err != nil {
		return result{}, fmt.Errorf("savepoint: %w", err)
	}
	recs := make([]store.Record, len(group))
	for i, wr := range group {
		res, err := w.apply(ctx, wr.Delete, wr.Record, wr.Cond)
		if err != nil {
			return result{}, err
		}
		if res.err != nil {
			for _, st := range []*sql.Stmt{w.rollbackTo, w.release} {
				if _, err := st.ExecContext(ctx); err != nil {
					return result{}, fmt.Errorf("roll back to savepoint: %w", err)
				}
			}
			return result{err: &store.BatchError{Index: i, Kind: wr.Record.Kind, ID: wr.Record.ID, Err: res.err}}, nil
		}
		recs[i] = res.rec
	}
	if _, err := w.release.ExecContext(ctx); err != nil {
		return result{}, fmt.Errorf("release savepoint: %w", err)
	}
	return result{recs: recs}, nil
}

// createGroup writes a group made only of creates, a new device's usual
// Apply, with one INSERT of all its rows: one statement rather than a
// savepoint, an insert per write and a release, which was most of the
// writer's time per group that was not SQLite's B-tree work. A statement
// is atomic, so when one of its rows exists already SQLite undoes the rest
// and createGroup reports !ok; applyGroup then writes the group one by
// one under its savepoint, which names the write that failed.
func (w *writer) createGroup(ctx context.Context, group []store.Write) (res result, ok bool, err error) {
	n := len(group)
	if n < 2 || n > maxCreateGroup {
		return result{}, false, nil
	}
	for _, wr := range group {
		if wr.Delete || !wr.Cond.MustNotExist || wr.Cond.IfMatch != "" {
			return result{}, false, nil
		}
	}
	st := w.insRows[n]
	if st == nil {
		rows := strings.Repeat(insertRow+", ", n-1) + insertRow
		if st, err = w.conn.PrepareContext(ctx, "INSERT INTO records "+insertColumns+" VALUES "+rows); err != nil {
			return result{}, false, fmt.Errorf("prepare insert of %d rows: %w", n, err)
		}
		w.insRows[n] = st
	}
	now := time.Now().UnixNano()
	recs := make([]store.Record, n)
	args := make([]any, 0, n*insertArgs)
	for i, wr := range group {
		rec := wr.Record
		rec.ETag = newETag()
		rec.Created, rec.Updated = fromNanos(now), fromNanos(now)
		recs[i] = rec
		args = append(args, string(rec.Kind), key(rec.ID), rec.ID, key(rec.Ref), rec.Ref, nonNil(rec.Data), rec.ETag, now, now)
	}
	if _, err := st.ExecContext(ctx, args...); err != nil {
		if isConstraint(err) {
			return result{}, false, nil
		}
		return result{}, false, fmt.Errorf("insert %d rows: %w", n, err)
	}
	return result{recs: recs}, true, nil
}

// insertRow is one row's placeholders, insertArgs their number.
const (
	insertRow  = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
	insertArgs = 9
)

// isConstraint reports whether err is SQLite refusing a row for a
// constraint, here the unique id of a kind.
func isConstraint(err error) bool {
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == codeConstraint
}

// apply performs one write inside the batch's transaction. A failed
// condition goes into the result; the error return is for database
// failures.
func (w *writer) apply(ctx context.Context, del bool, rec store.Record, cond store.Condition) (result, error) {
	kind, k := string(rec.Kind), key(rec.ID)
	if !del && cond.MustNotExist && cond.IfMatch == "" {
		// A create needs no read of the current row: the unique index
		// refuses a second one, and the insert says whether it did.
		return w.create(ctx, rec)
	}
	var cur struct {
		id, etag         string
		created, updated int64
	}
	err := w.sel.QueryRowContext(ctx, kind, k).Scan(&cur.id, &cur.etag, &cur.created, &cur.updated)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return result{}, fmt.Errorf("read current: %w", err)
	}

	if err := check(!del, cond, exists, cur.etag); err != nil {
		return result{err: err}, nil
	}
	if del {
		if _, err := w.del.ExecContext(ctx, kind, k); err != nil {
			return result{}, fmt.Errorf("delete: %w", err)
		}
		return result{}, nil
	}

	rec.ETag = newETag()
	now := time.Now().UnixNano()
	if exists && now <= cur.updated {
		// Updated must move forward even if the clock has not (coarse
		// clocks, two writes in one batch) or has stepped back.
		now = cur.updated + 1
	}
	rec.Updated = fromNanos(now)
	if exists {
		rec.ID = cur.id
		rec.Created = fromNanos(cur.created)
		if _, err := w.upd.ExecContext(ctx, key(rec.Ref), rec.Ref, nonNil(rec.Data), rec.ETag, now, kind, k); err != nil {
			return result{}, fmt.Errorf("update: %w", err)
		}
	} else {
		rec.Created = rec.Updated
		if _, err := w.ins.ExecContext(ctx, kind, k, rec.ID, key(rec.Ref), rec.Ref, nonNil(rec.Data), rec.ETag, now, now); err != nil {
			return result{}, fmt.Errorf("insert: %w", err)
		}
	}
	return result{rec: rec}, nil
}

// create inserts rec if no record has its id, else fails with ErrExists.
func (w *writer) create(ctx context.Context, rec store.Record) (result, error) {
	rec.ETag = newETag()
	now := time.Now().UnixNano()
	rec.Created, rec.Updated = fromNanos(now), fromNanos(now)
	res, err := w.insNew.ExecContext(ctx, string(rec.Kind), key(rec.ID), rec.ID, key(rec.Ref), rec.Ref, nonNil(rec.Data), rec.ETag, now, now)
	if err != nil {
		return result{}, fmt.Errorf("insert: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return result{}, fmt.Errorf("insert: %w", err)
	}
	if n == 0 {
		return result{err: store.ErrExists}, nil
	}
	return result{rec: rec}, nil
}

// check evaluates a write's condition against the record's current state.
func check(put bool, cond store.Condition, exists bool, etag string) error {
	if put && cond.MustNotExist && exists {
		return store.ErrExists
	}
	if m := cond.IfMatch; m != "" && (!exists || (m != "*" && m != etag)) {
		return store.ErrPrecondition
	}
	if !put && !exists {
		return store.ErrNotFound
	}
	return nil
}

// newETag returns a random etag. Its 130 random bits make a repeat, which
// a client holding an old etag could mistake for "unchanged", practically
// impossible, even across deletes and re-creations and process restarts.
func newETag() string {
	return rand.Text()
}

// nonNil stores a missing document as an empty one; the column is NOT NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
