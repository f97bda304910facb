package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// errLocked is what lockFile returns when another process holds the lock.
var errLocked = errors.New("locked by another process")

// lockDataDir takes an exclusive lock on the data directory for the life of
// the process, so that a second dpsd started on the same directory stops
// with a clear message instead of sharing the embedded database, the CA
// and the built-in hubs' addresses with the first.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "dpsd.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("data dir %s is in use by another dpsd; give each node its own --data-dir", dir)
		}
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	return f, nil
}

// Running reports whether a dpsd holds dir's lock now, so that a client
// reading info.json can tell a running node's facts from those a stopped
// one left. It never blocks.
func Running(dir string) (bool, error) {
	f, err := os.Open(filepath.Join(dir, "dpsd.lock"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("data dir lock: %w", err)
	}
	defer f.Close()
	held, err := probeLock(f)
	if err != nil {
		return false, fmt.Errorf("data dir lock: %w", err)
	}
	return held, nil
}
