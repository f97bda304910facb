// Package store defines dpsd's storage: a small document store with
// compare-and-swap writes that the embedded SQLite store (store/sqlite) and
// the PostgreSQL store implement alike, checked by the conformance suite in
// store/storetest.
//
// Records are JSON documents addressed by (kind, id). Ids compare
// case-insensitively, as Azure's registration and enrollment ids do; the
// record keeps the spelling it was created with. Every write is atomic and
// durable when it returns, and every write gives the record a new etag, so
// callers get optimistic concurrency (If-Match) without locks.
package store
