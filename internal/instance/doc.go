// Package instance holds the identity of a dpsd instance: its ID scope and
// its shared access policies. It is created on first start and kept in the
// store, so every node of a cluster sees the same instance.
package instance
