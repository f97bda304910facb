package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/postgres"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// Kinds of store Config.Store names.
const (
	storeSQLite   = "sqlite"
	storePostgres = "postgres"
)

// storeKind tells which store cfgStore names: empty or "sqlite" for the
// embedded database in the data directory, a postgres:// (or
// postgresql://) URL for a PostgreSQL database shared by several nodes.
func storeKind(cfgStore string) (string, error) {
	lower := strings.ToLower(cfgStore)
	switch {
	case cfgStore == "" || lower == "sqlite":
		return storeSQLite, nil
	case strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://"):
		return storePostgres, nil
	}
	return "", fmt.Errorf("--store %q: want sqlite or a postgres:// URL", redactDSN(cfgStore))
}

// openStore opens the store that cfg.Store names (see storeKind).
func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	kind, err := storeKind(cfg.Store)
	if err != nil {
		return nil, err
	}
	if kind == storeSQLite {
		return sqlite.Open(ctx, filepath.Join(cfg.DataDir, "dpsd.db"))
	}
	st, err := postgres.Open(ctx, cfg.Store)
	if err != nil {
		// A plain nil, not a nil *postgres.Store in the interface, which
		// callers would take for an open store. The DSN is not repeated:
		// it may hold a password (pgx redacts its own).
		return nil, err
	}
	return st, nil
}

// redactDSN hides a password in a database URL for messages.
func redactDSN(dsn string) string {
	if i := strings.Index(dsn, "://"); i >= 0 {
		rest := dsn[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 {
				return dsn[:i+3] + rest[:c] + ":****" + rest[at:]
			}
		}
	}
	return dsn
}
