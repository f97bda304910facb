// Package storetest is the conformance suite every store.Store
// implementation must pass. The embedded SQLite store and the PostgreSQL
// store run the same suite, so callers can rely on identical semantics
// whichever database backs dpsd.
package storetest
