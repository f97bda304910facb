// Package pgtest gives tests a PostgreSQL database of their own.
//
// The server comes from the DSN in the environment variable
// DPSD_TEST_POSTGRES (scripts/ensure-postgres.sh prints one), or DefaultDSN
// when it is unset. Each call of Schema creates a new, empty schema on that
// server and returns a DSN whose search_path selects it, so tests running
// at the same time, or runs left over from a crash, never see each other's
// tables. The schema is dropped when the test ends.
//
// When the server cannot be reached the test is skipped with a message
// saying how to provide one, except in CI (CI set to a true value), where
// a missing database fails the test instead of passing unnoticed.
//
// Tests only ever talk to a server on a loopback address (127.0.0.0/8,
// ::1) or a Unix socket; any other host in the DSN fails the test.
package pgtest
