package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Backup writes a consistent copy of the database at path into dest, a file
// that must not exist yet, while the database stays in use: SQLite's
// VACUUM INTO reads one snapshot through a connection of its own, so a
// running dpsd goes on writing (WAL mode) and the copy holds every commit
// made before it started and none after. The copy is compact and is a
// database on its own (no -wal file to go with it).
func Backup(ctx context.Context, path, dest string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("sqlite backup: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("sqlite backup: %w", err)
	}
	destAbs, err := filepath.Abs(dest)
	if err != nil {
		return fmt.Errorf("sqlite backup: %w", err)
	}
	if _, err := os.Stat(destAbs); err == nil {
		return fmt.Errorf("sqlite backup: %s exists; choose a new file", dest)
	}
	// Not query_only, which refuses VACUUM INTO; the statement reads the
	// source only, and this connection runs nothing else.
	db, err := sql.Open(driverName, dsn(abs, false))
	if err != nil {
		return fmt.Errorf("sqlite backup: open %s: %w", abs, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", destAbs); err != nil {
		os.Remove(destAbs)
		return fmt.Errorf("sqlite backup of %s into %s: %w", abs, dest, mapErr(err))
	}
	// The copy holds the owner key's instance; keep it the owner's only.
	if err := os.Chmod(destAbs, 0o600); err != nil {
		return fmt.Errorf("sqlite backup: %w", err)
	}
	return nil
}

// CheckResult is what Check found in a backup.
type CheckResult struct {
	// SchemaVersion is the backup's schema version; this dpsd migrates
	// any version up to its own when it opens the database.
	SchemaVersion int
	// Records counts the records of each kind.
	Records map[string]int
}

// Check opens the database file at path read-only and checks that it is a
// sound dpsd database: SQLite's integrity check passes, and its schema is
// one this dpsd knows (not newer). It changes nothing.
func Check(ctx context.Context, path string) (*CheckResult, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	db, err := sql.Open(driverName, dsn(abs, true))
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return nil, fmt.Errorf("check %s: not an SQLite database: %w", path, mapErr(err))
	}
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, fmt.Errorf("check %s: %w", path, err)
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("check %s: %w", path, mapErr(err))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("check %s: the database is damaged: %s", path, strings.Join(problems, "; "))
	}
	res := &CheckResult{Records: map[string]int{}}
	if err := db.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&res.SchemaVersion); err != nil {
		return nil, fmt.Errorf("check %s: not a dpsd database (no schema version): %w", path, mapErr(err))
	}
	if latest := migrations[len(migrations)-1].version; res.SchemaVersion > latest {
		return nil, fmt.Errorf("check %s: schema version %d is newer than this dpsd's (%d): restore it with the dpsd that made it", path, res.SchemaVersion, latest)
	}
	rows, err = db.QueryContext(ctx, "SELECT kind, COUNT(*) FROM records GROUP BY kind")
	if err != nil {
		return nil, fmt.Errorf("check %s: not a dpsd database: %w", path, mapErr(err))
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var n int
		if err := rows.Scan(&kind, &n); err != nil {
			return nil, fmt.Errorf("check %s: %w", path, err)
		}
		res.Records[kind] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("check %s: %w", path, mapErr(err))
	}
	return res, nil
}

// Restore replaces the database at path with the backup at from, after
// Check passes. Nothing may have the database open. The database it
// replaces is kept beside it as path + ".before-restore" (a previous one
// of that name is replaced), with its -wal and -shm files, so a restore
// can be undone.
func Restore(ctx context.Context, from, path string) (*CheckResult, error) {
	res, err := Check(ctx, from)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(from)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	tmp := path + ".restoring"
	if err := writeSynced(tmp, data); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	// Move the current database and its WAL aside together: a WAL left
	// beside the restored file would be replayed into it.
	for _, suffix := range []string{"", "-wal", "-shm"} {
		err := os.Rename(path+suffix, path+".before-restore"+suffix)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			os.Remove(tmp)
			return nil, fmt.Errorf("restore: keep the current database: %w", err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return res, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
