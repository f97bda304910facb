package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpsd/dpsd/internal/store"
)

// synchronous is the durability level of commits. FULL makes WAL mode fsync
// the log on every commit, so an acknowledged write survives power loss and
// OS crashes, not only a crash of the process (which NORMAL already
// survives). Group commit pays one fsync per batch, which makes FULL
// affordable; see docs/benchmarks.md. A variable so benchmarks can compare.
var synchronous = "FULL"

// busyTimeout is how long a connection waits for a lock held by another
// connection (another process using the same file, or a checkpoint) before
// failing with SQLITE_BUSY, reported as store.ErrUnavailable. A variable so
// tests need not wait the full time.
var busyTimeout = 5 * time.Second

// mmapSize is how much of the database file is memory-mapped. Address
// space, not memory: the OS shares and evicts the mapped pages.
const mmapSize = 1 << 30

// errClosed is returned by every method after Close.
var errClosed = fmt.Errorf("%w: store is closed", store.ErrUnavailable)

// Store is a store.Store in a SQLite database file. It is safe for
// concurrent use.
//
// A Store keeps an index of the ids that exist, so that a Get of a missing
// record needs no database read; for that it must be the only writer of
// the file. Open therefore fails while another Store, in this process or
// another, has the file open, unless both are opened WithoutIndex.
// Programs that are not a Store (the sqlite3 shell, a backup tool) must not
// write the file while a Store with an index has it open: Gets would not
// see records they create. Reading it is fine.
type Store struct {
	path string
	wdb  *sql.DB // exactly one connection, owned by the writer goroutine
	rdb  *sql.DB // read-only pool

	idx  *keyIndex // nil WithoutIndex
	lock *os.File  // flock held while open (see lockFile); nil if none

	getStmt     *sql.Stmt
	listStmt    *sql.Stmt
	listRefStmt *sql.Stmt

	w      *writer
	health store.WriteHealth

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var (
	_ store.Store        = (*Store)(nil)
	_ store.WriteChecker = (*Store)(nil)
)

// An Option changes how Open opens a database.
type Option func(*options)

type options struct {
	noIndex bool
	linger  time.Duration // how long a batch may wait for company; see writer.gather
}

// WithoutIndex opens the database without the in-memory index of ids, so
// every Get reads the database. Stores opened WithoutIndex may have the
// same file open at the same time (their writes then wait for each
// other's locks); none of them may be open together with a Store that has
// the index.
func WithoutIndex() Option { return func(o *options) { o.noIndex = true } }

// Open opens or creates the database at path (for example
// "/var/lib/dpsd/dpsd.db"), creating its directory if needed, and brings the
// schema up to date. ctx bounds only the opening and migration. Next to the
// database it keeps a lock file, path + ".lock", which tells Stores that
// have the same database open apart.
func Open(ctx context.Context, path string, opts ...Option) (_ *Store, err error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	o := options{linger: maxLinger}
	for _, opt := range opts {
		opt(&o)
	}
	indexed := !o.noIndex && haveFlock
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: database path: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: create data directory: %w", err)
	}
	s := &Store{path: abs}
	defer func() {
		if err != nil {
			s.closeDBs()
			s.unlock()
		}
	}()
	// Taken before the database is touched, so that an indexed Store never
	// misses a write by another Store, not even during its migration.
	if s.lock, err = lockFile(abs+".lock", indexed); err != nil {
		return nil, fmt.Errorf("sqlite: %s: %w", abs, err)
	}
	if err := ownerOnly(abs); err != nil {
		return nil, err
	}

	// The writer's connection is opened first because it switches the file
	// to WAL mode, which readers then share.
	s.wdb, err = sql.Open(driverName, dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, mapErr(err))
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	// journal_mode is a property of the file; synchronous is per connection,
	// and only the writer's matters because only it commits.
	for _, p := range []string{
		"PRAGMA journal_mode = WAL",
		"PRAGMA synchronous = " + synchronous,
		// Truncate the WAL after checkpoints so a burst of large documents
		// does not leave a large -wal file behind.
		"PRAGMA journal_size_limit = 67108864",
		// Keep the savepoint journal of an Apply in memory. On disk it
		// grows across a whole group commit (SQLite truncates only an
		// in-memory one when a savepoint is released), and each page a
		// batch first touches cost a pwrite there: 7 % of the process's
		// CPU under HTTPS load. It never needs to survive a crash; the
		// WAL makes commits durable.
		"PRAGMA temp_store = MEMORY",
	} {
		if _, err := conn.ExecContext(ctx, p); err != nil {
			return nil, fmt.Errorf("sqlite: %s: %w", p, mapErr(err))
		}
	}
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return nil, fmt.Errorf("sqlite: read journal mode: %w", mapErr(err))
	}
	if !strings.EqualFold(mode, "wal") {
		return nil, fmt.Errorf("sqlite: %s: journal mode is %q, want wal", abs, mode)
	}
	if err := migrate(ctx, conn); err != nil {
		return nil, fmt.Errorf("sqlite: %s: %w", abs, err)
	}

	s.rdb, err = sql.Open(driverName, dsn(abs, true))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s for reading: %w", abs, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	s.rdb.SetMaxOpenConns(readers)
	s.rdb.SetMaxIdleConns(readers)
	s.rdb.SetConnMaxLifetime(0)
	s.rdb.SetConnMaxIdleTime(0)
	const cols = "id, ref, data, etag, created, updated"
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&s.getStmt, "SELECT " + cols + " FROM records WHERE kind = ? AND id_key = ?"},
		{&s.listStmt, "SELECT " + cols + " FROM records WHERE kind = ? AND id_key > ? ORDER BY id_key LIMIT ?"},
		{&s.listRefStmt, "SELECT " + cols + " FROM records WHERE kind = ? AND ref_key = ? AND id_key > ? ORDER BY id_key LIMIT ?"},
	} {
		if *p.stmt, err = s.rdb.PrepareContext(ctx, p.sql); err != nil {
			return nil, fmt.Errorf("sqlite: prepare: %w", mapErr(err))
		}
	}

	if indexed {
		s.idx = newKeyIndex(s.rdb)
	}
	s.w, err = startWriter(ctx, conn, s.idx, o.linger)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %s: %w", abs, err)
	}
	return s, nil
}

// dsn builds a file: URI so that any path, including one with '?' or '#',
// names the file it says.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	// Read the file through a shared memory map rather than each
	// connection's small page cache (2 MiB by default): with the cache, a
	// point read in a database larger than that costs a pread per page
	// missed, which dominated Get's profile.
	q.Add("_pragma", fmt.Sprintf("mmap_size(%d)", mmapSize))
	if readOnly {
		// query_only rather than mode=ro: a read-only open could not create
		// the WAL index if the writer had not yet, and query_only still
		// guarantees the pool never writes.
		q.Set("_query_only", "1")
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path), RawQuery: q.Encode()}
	return u.String()
}

// key is the case-insensitive form of ids and refs used for lookups,
// ordering and filtering.
func key(s string) string { return strings.ToLower(s) }

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind store.Kind, id string) (store.Record, error) {
	if s.closed.Load() {
		return store.Record{}, errClosed
	}
	k := key(id)
	if s.idx != nil && s.idx.absent(kind, k) {
		return store.Record{}, fmt.Errorf("get %s %q: %w", kind, id, store.ErrNotFound)
	}
	rec := store.Record{Kind: kind}
	var created, updated int64
	err := s.getStmt.QueryRowContext(ctx, string(kind), k).
		Scan(&rec.ID, &rec.Ref, &rec.Data, &rec.ETag, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Record{}, fmt.Errorf("get %s %q: %w", kind, id, store.ErrNotFound)
	}
	if err != nil {
		return store.Record{}, fmt.Errorf("get %s %q: %w", kind, id, s.readErr(err))
	}
	rec.Created, rec.Updated = fromNanos(created), fromNanos(updated)
	return rec, nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, kind store.Kind, opt store.ListOptions) ([]store.Record, bool, error) {
	if s.closed.Load() {
		return nil, false, errClosed
	}
	limit := opt.Limit
	if limit <= 0 {
		limit = store.DefaultListLimit
	}
	var rows *sql.Rows
	var err error
	// One row beyond the page tells whether more follow.
	if opt.Ref == "" {
		rows, err = s.listStmt.QueryContext(ctx, string(kind), key(opt.After), limit+1)
	} else {
		rows, err = s.listRefStmt.QueryContext(ctx, string(kind), key(opt.Ref), key(opt.After), limit+1)
	}
	if err != nil {
		return nil, false, fmt.Errorf("list %s: %w", kind, s.readErr(err))
	}
	defer rows.Close()
	var recs []store.Record
	for rows.Next() {
		rec := store.Record{Kind: kind}
		var created, updated int64
		if err := rows.Scan(&rec.ID, &rec.Ref, &rec.Data, &rec.ETag, &created, &updated); err != nil {
			return nil, false, fmt.Errorf("list %s: %w", kind, s.readErr(err))
		}
		rec.Created, rec.Updated = fromNanos(created), fromNanos(updated)
		recs = append(recs, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list %s: %w", kind, s.readErr(err))
	}
	more := len(recs) > limit
	if more {
		recs = recs[:limit]
	}
	return recs, more, nil
}

// Put implements store.Store. It returns once the write is durable (or has
// failed); if ctx ends while the write is still queued the write is dropped
// and ctx's error returned, but once the writer has taken it Put waits for
// the outcome, so an error always means the record was not changed.
func (s *Store) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	if rec.ID == "" {
		return store.Record{}, fmt.Errorf("put %s: empty id", rec.Kind)
	}
	if rec.Kind == "" {
		return store.Record{}, fmt.Errorf("put %q: empty kind", rec.ID)
	}
	res, err := s.w.do(ctx, &op{put: true, rec: rec, cond: cond})
	s.health.Observe(err)
	if err != nil {
		return store.Record{}, fmt.Errorf("put %s %q: %w", rec.Kind, rec.ID, err)
	}
	return res, nil
}

// Delete implements store.Store, with the same guarantees as Put.
func (s *Store) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	_, err := s.w.do(ctx, &op{rec: store.Record{Kind: kind, ID: id}, cond: cond})
	s.health.Observe(err)
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, id, err)
	}
	return nil
}

// Apply implements store.Batcher. The writes join the writer's next batch
// like any Put, under a savepoint of their own, so they cost no commit of
// their own.
func (s *Store) Apply(ctx context.Context, writes []store.Write) ([]store.Record, error) {
	if err := store.CheckWrites(writes); err != nil {
		return nil, err
	}
	if len(writes) == 0 {
		return nil, nil
	}
	res, err := s.w.doResult(ctx, &op{group: writes})
	s.health.Observe(err)
	if err != nil {
		return nil, fmt.Errorf("apply %d writes: %w", len(writes), err)
	}
	return res.recs, nil
}

// CheckWrite implements store.WriteChecker: SQLite answers reads from a
// full disk or a file system remounted read-only, so only a write tells.
func (s *Store) CheckWrite(ctx context.Context) error {
	return s.health.Check(ctx, func(ctx context.Context) error {
		_, err := s.w.do(ctx, &op{put: true, rec: store.Record{Kind: store.KindHealth, ID: "probe", Data: []byte("{}")}})
		return err
	})
}

// Close waits for queued writes to commit and closes the database. Writes
// arriving after Close fail with store.ErrUnavailable. Close may be called
// more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.w.close()
		if s.idx != nil {
			s.idx.close()
		}
		s.closeErr = s.closeDBs()
		// Only now may another Store write the file.
		s.unlock()
	})
	return s.closeErr
}

// unlock releases the lock file; closing it drops the flock.
func (s *Store) unlock() {
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
}

func (s *Store) closeDBs() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.getStmt, s.listStmt, s.listRefStmt} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlite: close %s: %w", s.path, err)
	}
	return nil
}

// readErr maps a read error, reporting a store closed under a running
// read as closed rather than as a database failure.
func (s *Store) readErr(err error) error {
	if s.closed.Load() && (errors.Is(err, sql.ErrConnDone) || strings.Contains(err.Error(), "database is closed")) {
		return errClosed
	}
	return mapErr(err)
}

// SQLite primary result codes that mean the database cannot be used right
// now rather than that the request was wrong.
const (
	codeBusy       = 5  // SQLITE_BUSY: another connection holds the lock
	codeLocked     = 6  // SQLITE_LOCKED
	codeNoMem      = 7  // SQLITE_NOMEM
	codeIOErr      = 10 // SQLITE_IOERR
	codeFull       = 13 // SQLITE_FULL: disk full
	codeCantOpen   = 14 // SQLITE_CANTOPEN
	codeConstraint = 19 // SQLITE_CONSTRAINT: a row broke a constraint
)

// mapErr wraps errors that mean "try again later" (lock contention, a full
// disk, I/O errors) with store.ErrUnavailable so callers answer 503 with
// Retry-After; other errors pass through unchanged.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() & 0xff {
		case codeBusy, codeLocked, codeNoMem, codeIOErr, codeFull, codeCantOpen:
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		return err
	}
	if msg := err.Error(); strings.Contains(msg, "database is locked") || strings.Contains(msg, "SQLITE_BUSY") {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// ownerOnly makes the database file, and the WAL and shared-memory files
// beside it, readable by their owner only: they hold every key. SQLite
// creates its files with the process's umask (0644, typically) but gives
// the WAL and shared-memory files the database file's permissions, so
// the database is created here first, 0600; files an older dpsd left
// more open are closed down.
func ownerOnly(db string) error {
	f, err := os.OpenFile(db, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		f.Close()
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("sqlite: create %s: %w", db, err)
	}
	for _, p := range []string{db, db + "-wal", db + "-shm"} {
		st, err := os.Stat(p)
		if err != nil {
			continue // the WAL and shm files come and go
		}
		if st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("sqlite: restrict %s to its owner: %w", p, err)
			}
		}
	}
	return nil
}
