// Package sqlite is dpsd's embedded store: a store.Store kept in one SQLite
// file, so a single dpsd needs no database server.
//
// Writes go through one writer goroutine that commits concurrent writes
// together (group commit): SQLite allows a single writer at a time and every
// durable commit costs an fsync, so batching is what lets many devices
// register per second while each is still acknowledged only after its write
// is on disk. Reads use a separate pool of connections and, thanks to WAL
// mode, never wait for the writer; a Get of a record that does not exist
// does not even read, but is answered from an in-memory index of the ids
// that do (index.go).
package sqlite
