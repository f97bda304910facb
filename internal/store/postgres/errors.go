package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dpsd/dpsd/internal/store"
)

// errClosed is returned by every method after Close.
var errClosed = fmt.Errorf("%w: store is closed", store.ErrUnavailable)

// transientStates are SQLSTATEs (or, with two characters, SQLSTATE
// classes) that mean "the database cannot serve this right now" rather
// than "the request is wrong": callers answer 503 with Retry-After and the
// client tries again, possibly on another node.
var transientStates = []string{
	"08",    // connection exception
	"53",    // insufficient resources: too many connections, disk full, out of memory
	"58",    // system error: I/O error
	"57P01", // admin_shutdown: the server is stopping
	"57P02", // crash_shutdown
	"57P03", // cannot_connect_now: the server is starting up or in recovery
	"57P05", // idle_session_timeout
	"57014", // query_canceled: statement_timeout set by the operator
	"40001", // serialization_failure
	"40P01", // deadlock_detected
	"55P03", // lock_not_available: lock_timeout set by the operator
	"25006", // read_only_sql_transaction: connected to a standby (e.g. during failover)
}

// transientState reports whether a SQLSTATE is in transientStates.
func transientState(code string) bool {
	for _, s := range transientStates {
		if strings.HasPrefix(code, s) {
			return true
		}
	}
	return false
}

// mapErr wraps errors that mean the database cannot be reached or cannot
// serve right now with store.ErrUnavailable, so the engine answers 503 with
// Retry-After instead of a wrong result. A context's own cancellation and
// errors that are the request's fault pass through unchanged.
func mapErr(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// mapErr is the package mapErr for a call made with ctx. It reports any
// failure of a closed store as the store being closed (pgxpool's own
// "closed pool" says less), and a failure after the caller's own context
// ended as that context's error rather than as the database's fault.
func (s *Store) mapErr(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		return fmt.Errorf("%w (%w)", errClosed, err)
	case ctx.Err() != nil:
		if !errors.Is(err, ctx.Err()) {
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return err
	}
	return mapErr(err)
}

// unavailable reports whether err means the database is unreachable or
// temporarily unable to serve.
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server answered: only some of its errors are transient.
		return transientState(pgErr.Code)
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, pgconn.ErrConnClosed):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// Callers (Store.mapErr) have already returned a cancellation of
		// their own context as it is, so a deadline here is one the store
		// set itself (writeTimeout): the database did not answer in time.
		return true
	case pgconn.SafeToRetry(err):
		// Failed before anything reached the server (a broken pooled
		// connection): the database, not the request, is the problem.
		return true
	}
	return false
}

// ambiguous reports whether a failed write might nevertheless have
// committed: the statement may have reached the server, and no answer from
// the server (which would mean it was rolled back) came back.
func ambiguous(err error) bool {
	if err == nil || pgconn.SafeToRetry(err) {
		return false
	}
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr)
}
