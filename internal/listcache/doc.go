// Package listcache keeps a list read from a store for a short while, so
// that hot paths (every device registration) do not read it again each time.
//
// Writers drop the list with Invalidate when they change what it holds; the
// TTL bounds how stale it can get when such a notification is lost, for
// example while a PostgreSQL change listener reconnects.
package listcache
