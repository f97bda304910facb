package postgres

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dpsd/dpsd/internal/store"
)

// Tunables. Variables rather than constants so tests can shorten them.
var (
	// defaultMaxConns is the pool size when the DSN sets no
	// pool_max_conns. A registration makes a few short statements, so a
	// modest pool per node keeps PostgreSQL's max_connections (100 by
	// default) enough for several nodes.
	defaultMaxConns int32 = 16
	// connectTimeout bounds one connection attempt when the DSN sets no
	// connect_timeout, so an unreachable server is reported as
	// unavailable promptly instead of after the operating system's TCP
	// timeout.
	connectTimeout = 10 * time.Second
	// writeTimeout bounds a write once it is sent. Writes are not
	// cancelled by their caller's context once sent (see Store.write), so
	// this is what stops a write from waiting forever on a hung server.
	writeTimeout = 15 * time.Second
	// resolveTimeout bounds the read that settles whether a write whose
	// answer was lost committed.
	resolveTimeout = 5 * time.Second
)

// maxAttempts bounds how often one call is tried on a fresh connection
// after a failure that is safe to retry (for example a pooled connection
// the server closed when it restarted).
const maxAttempts = 3

// Store is a store.Store in a PostgreSQL database. It is safe for
// concurrent use, and any number of Stores (in any number of processes)
// may use one database at once.
type Store struct {
	pool *pgxpool.Pool

	closed    atomic.Bool
	closeOnce sync.Once

	// life ends when the store closes, and with it every Changes
	// listener, which listeners counts. listenMu orders starting a
	// listener against Close.
	life      context.Context
	endLife   context.CancelFunc
	listenMu  sync.Mutex
	listeners sync.WaitGroup
	// listenHook, when set (by tests), is told the backend process id of
	// each connection that starts listening.
	listenHook func(pid uint32)

	health store.WriteHealth
}

var (
	_ store.Store        = (*Store)(nil)
	_ store.WriteChecker = (*Store)(nil)
)

// Open connects to the database that dsn names, a URL
// ("postgres://user:password@host:5432/dpsd?sslmode=verify-full") or a
// keyword/value string, and brings the schema up to date. Besides the
// usual libpq settings the DSN may set pool_max_conns and the other
// pgxpool settings, and run-time parameters such as search_path to keep
// dpsd's tables in a schema of their own. ctx bounds only the opening and
// migration. A server that cannot be reached is reported as
// store.ErrUnavailable.
func Open(ctx context.Context, dsn string) (_ *Store, err error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors redact the password.
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		// Lets an operator tell dpsd's sessions apart in pg_stat_activity.
		cfg.ConnConfig.RuntimeParams["application_name"] = "dpsd"
	}
	where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", where, mapErr(err))
	}
	defer func() {
		if err != nil {
			pool.Close()
		}
	}()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s: %w", where, mapErr(err))
	}
	defer conn.Release()
	if err := migrate(ctx, conn.Conn()); err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", where, err)
	}
	life, endLife := context.WithCancel(context.Background())
	return &Store{pool: pool, life: life, endLife: endLife}, nil
}

// The statements. Parameters common to all: $1 kind, $2 lower-cased id.
const (
	cols = "id, ref, data, etag, created, updated"

	sqlGet     = "SELECT " + cols + " FROM " + recordsTable + " WHERE kind = $1 AND id_key = $2"
	sqlList    = "SELECT " + cols + " FROM " + recordsTable + " WHERE kind = $1 AND id_key > $2 ORDER BY id_key LIMIT $3"
	sqlListRef = "SELECT " + cols + " FROM " + recordsTable + " WHERE kind = $1 AND ref_key = $2 AND id_key > $3 ORDER BY id_key LIMIT $4"

	// statement_timestamp() is the same for every use within a statement,
	// so a new record's Created and Updated are equal. An update's time is
	// kept past the previous one so Updated strictly increases even when
	// two updates share a microsecond or the server's clock steps back.
	nextUpdated = "GREATEST(statement_timestamp(), r.updated + interval '1 microsecond')"

	// $3 id, $4 lower-cased ref, $5 ref, $6 data, $7 etag.
	sqlInsertValues = "INSERT INTO " + recordsTable + " AS r (kind, id_key, id, ref_key, ref, data, etag, created, updated)" +
		" VALUES ($1, $2, $3, $4, $5, $6, $7, statement_timestamp(), statement_timestamp())"
	// The id, and Created, of an existing record are kept: RETURNING
	// reports the stored spelling.
	sqlUpsert = sqlInsertValues + " ON CONFLICT (kind, id_key) DO UPDATE SET" +
		" ref_key = EXCLUDED.ref_key, ref = EXCLUDED.ref, data = EXCLUDED.data, etag = EXCLUDED.etag, updated = " + nextUpdated +
		" RETURNING r.id, r.created, r.updated"
	sqlInsertNew = sqlInsertValues + " ON CONFLICT (kind, id_key) DO NOTHING RETURNING r.id, r.created, r.updated"
	// $3 lower-cased ref, $4 ref, $5 data, $6 new etag, $7 If-Match. Under
	// READ COMMITTED a concurrent update makes this statement wait for the
	// row and re-check the etag against the committed row, so exactly one
	// of several writers holding the same etag succeeds.
	sqlUpdateIfMatch = "UPDATE " + recordsTable + " AS r SET ref_key = $3, ref = $4, data = $5, etag = $6, updated = " + nextUpdated +
		" WHERE kind = $1 AND id_key = $2 AND ($7 = '*' OR etag = $7) RETURNING r.id, r.created, r.updated"
	// $3 If-Match, empty for none.
	sqlDelete = "DELETE FROM " + recordsTable + " WHERE kind = $1 AND id_key = $2 AND ($3 IN ('', '*') OR etag = $3)"
)

// key is the case-insensitive form of ids and refs used for lookups,
// ordering and filtering. It is computed here rather than with SQL lower()
// so it is the same as the SQLite store's whatever the database's locale.
func key(s string) string { return strings.ToLower(s) }

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind store.Kind, id string) (store.Record, error) {
	if s.closed.Load() {
		return store.Record{}, errClosed
	}
	var rec store.Record
	err := s.read(ctx, func(ctx context.Context) error {
		var err error
		rec, err = scanRecord(s.pool.QueryRow(ctx, sqlGet, string(kind), key(id)), kind)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Record{}, fmt.Errorf("get %s %q: %w", kind, id, store.ErrNotFound)
	}
	if err != nil {
		return store.Record{}, fmt.Errorf("get %s %q: %w", kind, id, s.mapErr(ctx, err))
	}
	return rec, nil
}

// List implements store.Store. Paging is by key (the lower-cased id of the
// last record of the previous page), so a page costs the same however deep
// into the collection it is, and records written between pages are neither
// skipped nor repeated unless their ids sort before the cursor.
func (s *Store) List(ctx context.Context, kind store.Kind, opt store.ListOptions) ([]store.Record, bool, error) {
	if s.closed.Load() {
		return nil, false, errClosed
	}
	limit := opt.Limit
	if limit <= 0 {
		limit = store.DefaultListLimit
	}
	var recs []store.Record
	err := s.read(ctx, func(ctx context.Context) error {
		recs = recs[:0]
		// One row beyond the page tells whether more follow.
		var rows pgx.Rows
		var err error
		if opt.Ref == "" {
			rows, err = s.pool.Query(ctx, sqlList, string(kind), key(opt.After), limit+1)
		} else {
			rows, err = s.pool.Query(ctx, sqlListRef, string(kind), key(opt.Ref), key(opt.After), limit+1)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			rec, err := scanRecord(rows, kind)
			if err != nil {
				return err
			}
			recs = append(recs, rec)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, false, fmt.Errorf("list %s: %w", kind, s.mapErr(ctx, err))
	}
	more := len(recs) > limit
	if more {
		recs = recs[:limit]
	}
	return recs, more, nil
}

func scanRecord(row pgx.Row, kind store.Kind) (store.Record, error) {
	rec := store.Record{Kind: kind}
	if err := row.Scan(&rec.ID, &rec.Ref, &rec.Data, &rec.ETag, &rec.Created, &rec.Updated); err != nil {
		return store.Record{}, err
	}
	rec.Created, rec.Updated = rec.Created.UTC(), rec.Updated.UTC()
	return rec, nil
}

// Put implements store.Store. A Put that returns nil has committed. Once
// its statement is sent, a Put no longer follows its caller's context (a
// cancellation then could not tell whether the write happened); it is
// bounded by writeTimeout instead. When the answer to a sent write is lost
// (the connection broke), Put reads the record back: its etag is new and
// random, so finding it proves the write committed.
func (s *Store) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	out, err := s.put(ctx, rec, cond)
	s.health.Observe(err)
	return out, err
}

func (s *Store) put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	if rec.ID == "" {
		return store.Record{}, fmt.Errorf("put %s: empty id", rec.Kind)
	}
	if rec.Kind == "" {
		return store.Record{}, fmt.Errorf("put %q: empty kind", rec.ID)
	}
	if s.closed.Load() {
		return store.Record{}, errClosed
	}
	if err := ctx.Err(); err != nil {
		return store.Record{}, fmt.Errorf("put %s %q: %w", rec.Kind, rec.ID, err)
	}
	if cond.MustNotExist && cond.IfMatch != "" {
		// A record cannot both exist and not exist; answer as the SQLite
		// store does, without writing.
		_, err := s.Get(ctx, rec.Kind, rec.ID)
		switch {
		case err == nil:
			err = store.ErrExists
		case errors.Is(err, store.ErrNotFound):
			err = store.ErrPrecondition
		}
		return store.Record{}, fmt.Errorf("put %s %q: %w", rec.Kind, rec.ID, err)
	}

	out := rec
	out.ETag = newETag()
	q, args, condErr := putStatement(rec, cond, out.ETag)
	err := s.write(ctx, func(conn *pgxpool.Conn, ctx context.Context) error {
		return conn.QueryRow(ctx, q, args...).Scan(&out.ID, &out.Created, &out.Updated)
	})
	switch {
	case err == nil:
		out.Created, out.Updated = out.Created.UTC(), out.Updated.UTC()
		return out, nil
	case errors.Is(err, pgx.ErrNoRows) && condErr != nil:
		return store.Record{}, fmt.Errorf("put %s %q: %w", rec.Kind, rec.ID, condErr)
	case ambiguous(err) && !s.closed.Load():
		if got, ok := s.resolve(rec.Kind, rec.ID, out.ETag); ok {
			return got, nil
		}
	}
	return store.Record{}, fmt.Errorf("put %s %q: %w", rec.Kind, rec.ID, s.mapErr(ctx, err))
}

// putStatement returns the statement that puts rec under cond with the
// new etag, its arguments, and what its returning no row means.
func putStatement(rec store.Record, cond store.Condition, etag string) (q string, args []any, condErr error) {
	data := rec.Data
	if data == nil {
		data = []byte{} // the column is NOT NULL; a missing document is empty
	}
	kind, k := string(rec.Kind), key(rec.ID)
	switch {
	case cond.MustNotExist:
		return sqlInsertNew, []any{kind, k, rec.ID, key(rec.Ref), rec.Ref, data, etag}, store.ErrExists
	case cond.IfMatch != "":
		return sqlUpdateIfMatch, []any{kind, k, key(rec.Ref), rec.Ref, data, etag, cond.IfMatch}, store.ErrPrecondition
	default:
		return sqlUpsert, []any{kind, k, rec.ID, key(rec.Ref), rec.Ref, data, etag}, nil
	}
}

// resolve reports whether the record now carries etag, that is whether a
// write whose answer was lost committed, and if so the record. A false
// answer leaves the outcome unknown to the caller, who gets an error.
func (s *Store) resolve(kind store.Kind, id, etag string) (store.Record, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	got, err := s.Get(ctx, kind, id)
	if err != nil || got.ETag != etag {
		return store.Record{}, false
	}
	return got, true
}

// Delete implements store.Store. Like Put it is not cancelled by its
// caller once sent; an error means it may not have happened (and, only
// when the connection broke mid-way, that it may have).
func (s *Store) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	err := s.delete(ctx, kind, id, cond)
	s.health.Observe(err)
	return err
}

func (s *Store) delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, id, err)
	}
	var tag pgconn.CommandTag
	err := s.write(ctx, func(conn *pgxpool.Conn, ctx context.Context) error {
		var err error
		tag, err = conn.Exec(ctx, sqlDelete, string(kind), key(id), cond.IfMatch)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", kind, id, s.mapErr(ctx, err))
	}
	if tag.RowsAffected() == 0 {
		if cond.IfMatch != "" {
			return fmt.Errorf("delete %s %q: %w", kind, id, store.ErrPrecondition)
		}
		return fmt.Errorf("delete %s %q: %w", kind, id, store.ErrNotFound)
	}
	return nil
}

// read runs a read, trying again on a fresh connection after a
// connection failure: reads change nothing, so retrying is always safe.
func (s *Store) read(ctx context.Context, fn func(context.Context) error) error {
	var err error
	for range maxAttempts {
		err = fn(ctx)
		if err == nil || ctx.Err() != nil || s.closed.Load() || !retryableRead(err) {
			return err
		}
	}
	return err
}

// retryableRead reports whether a failed read is worth one more try: the
// connection failed, not the statement.
func retryableRead(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.Is(err, pgx.ErrNoRows) && !errors.As(err, &pgErr) && unavailable(err)
}

// write runs a write on a connection of its own. The connection is
// acquired under the caller's context (nothing is sent yet, so giving up
// there is harmless); the statement then runs under a context that only
// writeTimeout ends. A failure before anything was sent is retried on
// another connection, since such a write cannot have happened.
func (s *Store) write(ctx context.Context, fn func(*pgxpool.Conn, context.Context) error) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	var err error
	for range maxAttempts {
		var conn *pgxpool.Conn
		conn, err = s.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		err = fn(conn, wctx)
		conn.Release()
		if err == nil || !pgconn.SafeToRetry(err) || ctx.Err() != nil || s.closed.Load() {
			return err
		}
	}
	return err
}

// CheckWrite implements store.WriteChecker: a server that answers can
// still refuse writes (a full disk, a read-only replica after a failover).
func (s *Store) CheckWrite(ctx context.Context) error {
	return s.health.Check(ctx, func(ctx context.Context) error {
		_, err := s.put(ctx, store.Record{Kind: store.KindHealth, ID: "probe", Data: []byte("{}")}, store.Condition{})
		return err
	})
}

// Ping checks that the database answers, for health checks.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return errClosed
	}
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", s.mapErr(ctx, err))
	}
	return nil
}

// Close waits for statements in flight to finish, ends the Changes
// listeners (closing their channels) and closes the connections. Calls
// after Close fail with store.ErrUnavailable. Close may be called more
// than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.listenMu.Lock()
		s.closed.Store(true)
		s.listenMu.Unlock()
		s.endLife()
		s.listeners.Wait()
		s.pool.Close()
	})
	return nil
}

// newETag returns a random etag. Its 130 random bits make a repeat, which
// a client holding an old etag could mistake for "unchanged", practically
// impossible, even across deletes, re-creations and nodes. Being unique
// also lets Put recognise its own write when the answer was lost.
func newETag() string {
	return rand.Text()
}
