package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// A migration moves the schema from version-1 to version. Migrations are
// never edited once released: a database records which versions it has, and
// a changed migration would not be applied again.
type migration struct {
	version int
	name    string
	stmts   []string
}

// Table names carry a dpsd_ prefix so that dpsd can share a database (or
// schema) with other applications without colliding with their tables.
const (
	recordsTable    = "dpsd_records"
	migrationsTable = "dpsd_schema_migrations"
)

// migrations is the schema's history, in order. Versions are consecutive
// from 1.
var migrations = []migration{
	{
		version: 1,
		name:    "records",
		stmts: []string{
			// id_key and ref_key hold the lower-cased id and ref (lowered in
			// Go, exactly as the SQLite store does, so both stores agree on
			// what "the same id" means whatever the database's locale).
			// They use the "C" collation so that ordering, and therefore
			// keyset paging, is by bytes as in the SQLite store: a
			// linguistic collation would ignore the '-' in "dev-01" and
			// page in a different order. data is bytea rather than jsonb
			// so documents come back byte for byte as written. Times are
			// timestamptz, which PostgreSQL keeps in UTC with microseconds.
			`CREATE TABLE ` + recordsTable + ` (
				kind    text        NOT NULL,
				id_key  text        COLLATE "C" NOT NULL,
				id      text        NOT NULL,
				ref_key text        COLLATE "C" NOT NULL DEFAULT '',
				ref     text        NOT NULL DEFAULT '',
				data    bytea       NOT NULL,
				etag    text        NOT NULL,
				created timestamptz NOT NULL,
				updated timestamptz NOT NULL,
				PRIMARY KEY (kind, id_key)
			)`,
			`CREATE INDEX dpsd_records_ref ON ` + recordsTable + ` (kind, ref_key, id_key)`,
		},
	},
	{
		version: 2,
		name:    "change notifications",
		stmts: []string{
			// Tells listening nodes (Store.Changes) which kind of record
			// changed. The payload names the table's schema too: the
			// channel is database-wide, and deployments in other schemas
			// of the same database must not take each other's writes for
			// their own. pg_notify sends at commit, so a listener that
			// reads after being told finds the change.
			`CREATE FUNCTION dpsd_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				PERFORM pg_notify('` + changesChannel + `', json_build_object(
					'schema', TG_TABLE_SCHEMA,
					'kind', CASE TG_OP WHEN 'DELETE' THEN OLD.kind ELSE NEW.kind END)::text);
				RETURN NULL;
			END
			$$`,
			// Row triggers, because a statement trigger cannot tell the
			// kind. Only the kinds that nodes cache notify, and the WHEN
			// clause filters them before the function is called (for
			// AFTER triggers, before the event is even queued), so the
			// writes every registration makes (registration records, hub
			// device identities, allocation logs) cost one comparison and
			// never take the lock that notifying commits share. Individual
			// enrollments are not cached today but are written only by
			// operators, so they notify too: caching them later then needs
			// no migration, which every node would have to be upgraded
			// for. Keep this list in step with watchedKinds.
			`CREATE TRIGGER dpsd_records_notify_write AFTER INSERT OR UPDATE ON ` + recordsTable + ` FOR EACH ROW
				WHEN (NEW.kind IN ('enrollment', 'enrollmentGroup', 'linkedHub'))
				EXECUTE FUNCTION dpsd_notify_change()`,
			// DELETE in a trigger of its own: a WHEN clause of a trigger
			// that also fires on INSERT cannot read OLD.
			`CREATE TRIGGER dpsd_records_notify_delete AFTER DELETE ON ` + recordsTable + ` FOR EACH ROW
				WHEN (OLD.kind IN ('enrollment', 'enrollmentGroup', 'linkedHub'))
				EXECUTE FUNCTION dpsd_notify_change()`,
		},
	},
}

// migrationLockKey is the pg_advisory_xact_lock key that serializes
// migrations. Advisory locks are scoped to the database, so two dpsd
// deployments in different schemas of one database merely take turns.
// The value is arbitrary but fixed forever: every dpsd version must use it.
const migrationLockKey int64 = 0x64707364_6d696772 // "dpsdmigr"

// migrate brings the schema up to date in one transaction. Its first
// statement takes an advisory lock held until the transaction ends, so when
// several nodes start at once exactly one applies the migrations and the
// others, once the lock is theirs, find them applied. A transaction-scoped
// lock (rather than pg_advisory_lock and an explicit unlock) cannot be left
// behind by an error path or a connection returned to the pool. DDL is
// transactional in PostgreSQL, so a crash mid-migration leaves the
// previous version intact. It refuses a database written by a newer dpsd
// rather than guessing at its schema.
func migrate(ctx context.Context, conn *pgx.Conn) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin migration: %w", mapErr(err))
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return fmt.Errorf("lock for migration: %w", mapErr(err))
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+migrationsTable+` (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
	)`); err != nil {
		return fmt.Errorf("create %s: %w", migrationsTable, mapErr(err))
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+migrationsTable).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", mapErr(err))
	}
	latest := migrations[len(migrations)-1].version
	if current > latest {
		return fmt.Errorf("database schema version %d is newer than this dpsd supports (%d)", current, latest)
	}
	if current == latest {
		// Nothing to do; commit only to release the lock promptly (a
		// rollback would too, but would read as a failure in server logs).
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit migration: %w", mapErr(err))
		}
		return nil
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		for _, stmt := range m.stmts {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.version, m.name, mapErr(err))
			}
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+migrationsTable+" (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return fmt.Errorf("record migration %d: %w", m.version, mapErr(err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
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
	err := s.pool.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+migrationsTable).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: read schema version: %w", s.mapErr(ctx, err))
	}
	return v, nil
}
