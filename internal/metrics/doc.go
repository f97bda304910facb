// Package metrics exposes dpsd's Prometheus metrics: what devices asked and
// how they were answered, per transport, and what the service API served.
//
// Everything is registered on a registry of the package's own rather than
// Prometheus's global one, so that several servers in one process (tests,
// benchmarks) never collide and a library dependency cannot slip metrics
// into dpsd's output.
package metrics
