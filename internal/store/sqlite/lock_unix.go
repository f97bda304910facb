//go:build unix

package sqlite

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// haveFlock tells Open that lockFile can detect another Store.
const haveFlock = true

// lockFile takes a lock on lockPath (created if needed) for the life of the
// Store: exclusive for a Store with a key index, which must be the only
// writer of the database, shared for one without. flock rather than the
// POSIX locks SQLite uses, because flock locks conflict between two opens
// in the same process too, so two Stores in one test binary are caught as
// surely as two processes. The lock is on a file of its own, not on the
// database, so that it cannot interfere with SQLite's locking on systems
// that implement flock with POSIX locks.
func lockFile(lockPath string, exclusive bool) (*os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errors.New("the database is open in another Store (in this process or another), " +
				"and a Store with a key index must be its only writer; close the other, or open both WithoutIndex")
		}
		return nil, fmt.Errorf("lock file: %w", err)
	}
	return f, nil
}
