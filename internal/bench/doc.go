// Package bench is dpsd's load generator: it provisions many distinct
// simulated devices of one symmetric-key enrollment group, concurrently,
// and reports throughput, latency percentiles and errors.
//
// Load must never reach a host by accident, so Run refuses targets that are
// not loopback addresses unless Options.AllowRemote is set.
package bench
