// Package postgres is dpsd's shared store: a store.Store in a PostgreSQL
// database, so that several dpsd nodes behind a load balancer serve one
// set of enrollments and registrations and any node can answer any poll.
//
// Every write is a single statement that PostgreSQL commits on its own
// (autocommit), and every condition is part of that statement: a
// conditional UPDATE for If-Match, INSERT ... ON CONFLICT DO NOTHING for
// "must not exist", and INSERT ... ON CONFLICT DO UPDATE for unconditional
// writes. PostgreSQL's row locks then make compare-and-swap exact across
// nodes without explicit transactions or retries, and PostgreSQL commits
// concurrent transactions' WAL together, which gives the group commit the
// SQLite store has to do itself.
//
// Times come from the database server's clock, not the nodes', so that
// records written by different nodes order consistently even when the
// nodes' clocks disagree.
package postgres
