// Package cli implements the dpsd command line: the server ("serve") and the
// client commands shaped like "az iot dps". cmd/dpsd only calls Main.
package cli
