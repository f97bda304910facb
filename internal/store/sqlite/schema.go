package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// A migration moves the schema from version-1 to version. Migrations are
// never edited once released: a database records which versions it has, and
// a changed migration would not be applied again.
type migration struct {
	version int
	name    string
	stmts   []string
}

// migrations is the schema's history, in order. Versions are consecutive
// from 1.
var migrations = []migration{
	{
		version: 1,
		name:    "records",
		stmts: []string{
			// id_key and ref_key hold the lower-cased id and ref: lookups,
			// ordering and filtering ignore case while id and ref keep the
			// spelling they were written with. Times are UTC nanoseconds
			// since the Unix epoch. A rowid table rather than WITHOUT ROWID
			// because documents can be large (enrollment groups with
			// certificates), which WITHOUT ROWID tables handle poorly.
			`CREATE TABLE records (
				kind    TEXT    NOT NULL,
				id_key  TEXT    NOT NULL,
				id      TEXT    NOT NULL,
				ref_key TEXT    NOT NULL DEFAULT '',
				ref     TEXT    NOT NULL DEFAULT '',
				data    BLOB    NOT NULL,
				etag    TEXT    NOT NULL,
				created INTEGER NOT NULL,
				updated INTEGER NOT NULL
			)`,
			`CREATE UNIQUE INDEX records_key ON records (kind, id_key)`,
			`CREATE INDEX records_ref ON records (kind, ref_key, id_key)`,
		},
	},
}

// migrate brings the schema up to date inside one write transaction, so a
// crash mid-migration leaves the previous version intact and two processes
// opening the same file do not both migrate. It refuses a database written
// by a newer dpsd rather than guessing at its schema.
func migrate(ctx context.Context, conn *sql.Conn) (err error) {
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin migration: %w", mapErr(err))
	}
	defer func() {
		if err != nil {
			_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()

	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var current int
	if err := conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	latest := migrations[len(migrations)-1].version
	if current > latest {
		return fmt.Errorf("database schema version %d is newer than this dpsd supports (%d)", current, latest)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		for _, stmt := range m.stmts {
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
			}
		}
		if _, err := conn.ExecContext(ctx,
			"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
			m.version, m.name, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit migration: %w", mapErr(err))
	}
	return nil
}

// SchemaVersion reports the schema version recorded in the database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	var v int
	err := s.rdb.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", mapErr(err))
	}
	return v, nil
}
