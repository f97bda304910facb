package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// DatabaseFile is the embedded database in a data directory.
const DatabaseFile = "dpsd.db"

// errNoEmbedded says a data directory has no embedded database.
var errNoEmbedded = errors.New("no embedded database here: a node on PostgreSQL keeps its data there; back it up with pg_dump (docs/operations.md, \"Backups\")")

// Backup writes a consistent copy of the embedded database of dataDir into
// dest, online: the node may be running (sqlite.Backup).
func Backup(ctx context.Context, dataDir, dest string) error {
	db := filepath.Join(dataDir, DatabaseFile)
	if _, err := os.Stat(db); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w", dataDir, errNoEmbedded)
	}
	return sqlite.Backup(ctx, db, dest)
}

// CheckBackup checks a backup file (sqlite.Check).
func CheckBackup(ctx context.Context, file string) (*sqlite.CheckResult, error) {
	return sqlite.Check(ctx, file)
}

// Restore replaces the embedded database of dataDir with the backup file,
// after checking it; the node must be stopped.
func Restore(ctx context.Context, dataDir, file string) (*sqlite.CheckResult, error) {
	running, err := Running(dataDir)
	if err != nil {
		return nil, err
	}
	if running {
		return nil, fmt.Errorf("the dpsd of %s is running: stop it before restoring", dataDir)
	}
	// Hold the data directory's lock while the database is replaced, so
	// no dpsd starts on it meanwhile.
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	return sqlite.Restore(ctx, file, filepath.Join(dataDir, DatabaseFile))
}
