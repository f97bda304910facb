package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// EnvDSN names the environment variable holding the test server's DSN.
const EnvDSN = "DPSD_TEST_POSTGRES"

// DefaultDSN is used when EnvDSN is unset: the local server
// scripts/ensure-postgres.sh sets up.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/dpsd_test?sslmode=disable"

// setupTimeout bounds connecting, creating and dropping schemas.
const setupTimeout = 30 * time.Second

// unreachable remembers why the server could not be reached, so that the
// tests after the first skip (or fail) at once instead of each waiting
// for a connection attempt to time out.
var unreachable struct {
	sync.Mutex
	why string
}

// BaseDSN returns the DSN of the test server's database.
func BaseDSN() string {
	if v := strings.TrimSpace(os.Getenv(EnvDSN)); v != "" {
		return v
	}
	return DefaultDSN
}

// InCI reports whether tests run in CI, where missing prerequisites fail
// rather than skip.
func InCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// Unavailable skips t, or fails it in CI, because the test database
// cannot be used.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("PostgreSQL test database unavailable (CI is set, so this fails): %s", msg)
	}
	t.Skipf("skipping: PostgreSQL test database unavailable: %s (run scripts/ensure-postgres.sh and export %s=<the DSN it prints>; in CI this fails)", msg, EnvDSN)
}

// Schema creates a fresh schema in the test database and returns a DSN
// that uses it. The schema and everything in it are dropped in t's
// cleanup, which runs after cleanups registered later (such as closing a
// store opened on the DSN).
func Schema(t testing.TB) string {
	t.Helper()
	base := BaseDSN()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	conn := connect(t, ctx, base)
	defer conn.Close(context.WithoutCancel(ctx))

	name := "dpsd_t_" + randomHex(6)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", name, err)
	}
	t.Cleanup(func() { dropSchema(t, base, name) })
	dsn, err := WithParam(base, "search_path", name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

// Conn opens a plain connection to dsn for a test to inspect the
// database; it is closed in t's cleanup.
func Conn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn := connect(t, ctx, dsn)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// connect connects to dsn, creating its database first if the server says
// it does not exist, so a fresh server needs no manual set-up.
func connect(t testing.TB, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgtest: %s: %v", EnvDSN, err)
	}
	checkLoopback(t, cfg.Host)
	unreachable.Lock()
	why := unreachable.why
	unreachable.Unlock()
	if why != "" {
		Unavailable(t, "%s", why)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name
		createDatabase(t, ctx, cfg)
		conn, err = pgx.ConnectConfig(ctx, cfg)
	}
	if err != nil {
		why := fmt.Sprintf("connect to %s:%d/%s: %v", cfg.Host, cfg.Port, cfg.Database, err)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			// Not an answer from the server (refused, timed out): later
			// tests would fare no better.
			unreachable.Lock()
			unreachable.why = why
			unreachable.Unlock()
		}
		Unavailable(t, "%s", why)
	}
	return conn
}

// createDatabase creates cfg's database by way of the server's
// "postgres" maintenance database.
func createDatabase(t testing.TB, ctx context.Context, cfg *pgx.ConnConfig) {
	t.Helper()
	admin := cfg.Copy()
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		Unavailable(t, "database %q does not exist and the server's postgres database cannot be reached to create it: %v", cfg.Database, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{cfg.Database}.Sanitize())
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database: a parallel test won
		Unavailable(t, "create database %q: %v", cfg.Database, err)
	}
}

func dropSchema(t testing.TB, dsn, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Errorf("pgtest: drop schema %s: %v", name, err)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("pgtest: drop schema %s: %v", name, err)
	}
}

// checkLoopback fails t unless host is a loopback address, localhost or a
// Unix socket directory: tests must not send traffic anywhere else.
func checkLoopback(t testing.TB, host string) {
	t.Helper()
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return
	}
	t.Fatalf("pgtest: %s names host %q; tests only use a PostgreSQL server on a loopback address or a Unix socket", EnvDSN, host)
}

// WithParam returns dsn with a connection parameter added or replaced,
// for URL and keyword/value DSNs alike.
func WithParam(dsn, name, value string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse DSN: %w", err)
		}
		q := u.Query()
		q.Set(name, value)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value: a later setting wins, and the values used here need
	// no quoting.
	return strings.TrimSpace(dsn) + " " + name + "=" + value, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return hex.EncodeToString(b)
}
