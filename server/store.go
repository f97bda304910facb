package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dpsd/dpsd/store"
	"github.com/dpsd/dpsd/store/sqlite"
)

// openStore opens the store that cfg.Store names: empty or "sqlite" for the
// embedded database in the data directory.
func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	switch {
	case cfg.Store == "" || strings.EqualFold(cfg.Store, "sqlite"):
		return sqlite.Open(ctx, filepath.Join(cfg.DataDir, "dpsd.db"))
	}
	return nil, fmt.Errorf("--store %q: want sqlite or a postgres:// URL", redactDSN(cfg.Store))
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
