package sqlite

import (
	"context"
	"database/sql"
	"hash/maphash"
	"log/slog"
	"sync"

	"github.com/dpsd/dpsd/internal/store"
)

// The key index lets Get answer "not found" without a database read.
//
// A registration of a new device looks up three records that do not exist
// yet (individual enrollment, registration, hub identity), and each miss
// costs a WAL read transaction with its shared-memory locking. The store
// can answer those misses from memory because it is the only writer of the
// file: every write goes through its writer goroutine, and Open refuses to
// share the file with another Store that could write (see lockFile).
//
// Per kind, the index holds a set of 64-bit hashes of the lower-cased ids.
// The one invariant everything rests on: while a kind's set is ready, it
// holds the hash of every id of that kind that exists in the database.
// A hash that is missing therefore proves the record absent; a hash that is
// present proves nothing (it may be a collision, a deleted record or a
// write that failed), and Get asks the database as before. So the set may
// only ever err on the side of too many hashes, which keeps it simple:
//
//   - The writer adds the hashes of a batch's puts before it commits the
//     batch, so a record is never visible in the database while its hash is
//     missing, not even between the commit and the answer to its caller.
//   - Deletes leave their hash behind (removing it could hide another id
//     with the same hash); the writer counts them so that a set made mostly
//     of deleted ids is rebuilt rather than given up on.
//   - A set is loaded from the database by one query, in the background,
//     the first time a Get needs it. The load starts only between two write
//     batches (under commitMu), so each batch either added its hashes to
//     the set being loaded or committed before the load's read transaction
//     began and is part of what the query returns.
//
// A kind with more than maxIndexedKeys ids is not indexed (its Gets all go
// to the database until the Store is reopened), which bounds the memory to
// some 75 MB per kind (a Go map of 2 million hashes).
type keyIndex struct {
	seed maphash.Seed
	// commitMu is held by the writer for the whole of each batch and by a
	// load while it moves a kind from loadQueued to loading: see above.
	commitMu sync.Mutex
	kinds    sync.Map // store.Kind -> *kindIndex
	rdb      *sql.DB

	// mu guards closed and orders it against loads.Add, so that Close's
	// wait sees every load that was started.
	mu     sync.Mutex
	closed bool
	loads  sync.WaitGroup
	ctx    context.Context // ends at close; bounds loads
	cancel context.CancelFunc
}

// maxIndexedKeys bounds how many ids of one kind the index holds. A
// variable so tests can reach it.
var maxIndexedKeys = 2_000_000

// indexState is the life cycle of one kind's set.
type indexState int

const (
	unindexed  indexState = iota // no set; the next Get queues a load
	loadQueued                   // a load goroutine is waiting for commitMu
	loading                      // the query runs; the writer adds to hashes
	ready                        // hashes answers Gets
	tooMany                      // more than maxIndexedKeys: Gets use the database
)

// kindIndex is the index of one kind.
type kindIndex struct {
	mu    sync.RWMutex
	state indexState
	// hashes, when ready, holds the hash of every id of the kind in the
	// database (and perhaps others); when loading, the hashes the writer
	// added since the load began, merged into the loaded set at the end.
	hashes map[uint64]struct{}
	// deletes counts deletes committed since the load began: at most this
	// many hashes in the set belong to no record.
	deletes int
}

func newKeyIndex(rdb *sql.DB) *keyIndex {
	ix := &keyIndex{seed: maphash.MakeSeed(), rdb: rdb}
	ix.ctx, ix.cancel = context.WithCancel(context.Background())
	return ix
}

// kind returns k's index, creating it unindexed.
func (ix *keyIndex) kind(k store.Kind) *kindIndex {
	if ki, ok := ix.kinds.Load(k); ok {
		return ki.(*kindIndex)
	}
	ki, _ := ix.kinds.LoadOrStore(k, &kindIndex{})
	return ki.(*kindIndex)
}

func (ix *keyIndex) hash(idKey string) uint64 { return maphash.String(ix.seed, idKey) }

// absent reports whether the index proves that no record of kind has the
// lower-cased id idKey. false means "ask the database". The first call for
// a kind starts loading its set.
func (ix *keyIndex) absent(kind store.Kind, idKey string) bool {
	h := ix.hash(idKey)
	ki := ix.kind(kind)
	ki.mu.RLock()
	state := ki.state
	_, found := ki.hashes[h]
	ki.mu.RUnlock()
	switch state {
	case ready:
		return !found
	case unindexed:
		ix.queueLoad(kind, ki)
	}
	return false
}

// queueLoad starts loading ki unless a load is already on its way.
func (ix *keyIndex) queueLoad(kind store.Kind, ki *kindIndex) {
	ki.mu.Lock()
	if ki.state != unindexed {
		ki.mu.Unlock()
		return
	}
	ix.mu.Lock()
	if ix.closed {
		ix.mu.Unlock()
		ki.mu.Unlock()
		return
	}
	ix.loads.Add(1)
	ix.mu.Unlock()
	ki.state = loadQueued
	ki.mu.Unlock()
	go func() {
		defer ix.loads.Done()
		ix.load(kind, ki)
	}()
}

// load builds ki's set from the database.
func (ix *keyIndex) load(kind store.Kind, ki *kindIndex) {
	// Between batches (see keyIndex): from here on every batch adds its
	// puts' hashes to ki.hashes, and every earlier batch has committed.
	ix.commitMu.Lock()
	ki.mu.Lock()
	ki.state = loading
	ki.hashes = make(map[uint64]struct{})
	ki.deletes = 0
	ki.mu.Unlock()
	ix.commitMu.Unlock()

	set, err := ix.scan(kind)

	ki.mu.Lock()
	defer ki.mu.Unlock()
	switch {
	case err != nil:
		// Most likely the store is closing; otherwise the next Get tries
		// again. Until then Gets use the database, as they always may.
		if ix.ctx.Err() == nil {
			slog.Warn("sqlite store: loading key index failed", "kind", kind, "err", err)
		}
		ki.state, ki.hashes = unindexed, nil
	case set == nil || len(set)+len(ki.hashes) > maxIndexedKeys:
		ki.state, ki.hashes = tooMany, nil
	default:
		for h := range ki.hashes {
			set[h] = struct{}{}
		}
		ki.state, ki.hashes = ready, set
	}
}

// scan returns the hashes of kind's ids in the database, or nil if there
// are more than maxIndexedKeys.
func (ix *keyIndex) scan(kind store.Kind) (map[uint64]struct{}, error) {
	// id_key and kind are compared exactly as getStmt compares them, so a
	// record Get would find is one whose hash is in the set. The query is
	// answered from the records_key index alone.
	rows, err := ix.rdb.QueryContext(ix.ctx, "SELECT id_key FROM records WHERE kind = ?", string(kind))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := make(map[uint64]struct{})
	var k sql.RawBytes
	for rows.Next() {
		if len(set) >= maxIndexedKeys {
			return nil, nil
		}
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		set[maphash.Bytes(ix.seed, k)] = struct{}{}
	}
	return set, rows.Err()
}

// beginBatch is called by the writer before it commits anything of batch
// and endBatch after it has answered every op, with nothing in between
// that could block on a load.
func (ix *keyIndex) beginBatch(batch []*op) {
	ix.commitMu.Lock()
	for _, o := range batch {
		switch {
		case o.group != nil:
			for _, wr := range o.group {
				if !wr.Delete {
					ix.add(wr.Record.Kind, key(wr.Record.ID))
				}
			}
		case o.put:
			ix.add(o.rec.Kind, key(o.rec.ID))
		}
	}
}

func (ix *keyIndex) endBatch() { ix.commitMu.Unlock() }

// add puts idKey's hash into kind's set if the kind has or is loading one.
func (ix *keyIndex) add(kind store.Kind, idKey string) {
	h := ix.hash(idKey)
	ki := ix.kind(kind)
	ki.mu.Lock()
	defer ki.mu.Unlock()
	if ki.state != ready && ki.state != loading {
		// No set to keep up: a load that starts later runs after this
		// batch has committed (commitMu) and reads the record.
		return
	}
	ki.hashes[h] = struct{}{}
	if ki.state == ready && len(ki.hashes) > maxIndexedKeys {
		if ki.deletes >= len(ki.hashes)/2 {
			// Mostly hashes of deleted ids: a reload sheds them.
			ki.state, ki.hashes = unindexed, nil
		} else {
			ki.state, ki.hashes = tooMany, nil
		}
	}
}

// deleted notes a committed delete of a record of kind.
func (ix *keyIndex) deleted(kind store.Kind) {
	ki := ix.kind(kind)
	ki.mu.Lock()
	ki.deletes++
	ki.mu.Unlock()
}

// close stops loads and waits for them; the caller then closes rdb.
func (ix *keyIndex) close() {
	ix.mu.Lock()
	ix.closed = true
	ix.mu.Unlock()
	ix.cancel()
	ix.loads.Wait()
}

// state reports kind's state, for tests.
func (ix *keyIndex) state(kind store.Kind) indexState {
	ki := ix.kind(kind)
	ki.mu.RLock()
	defer ki.mu.RUnlock()
	return ki.state
}
