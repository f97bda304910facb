//go:build !unix

package connlimit

// fileLimit is DefaultMaxTotal's worth where there is no open-file limit
// to read.
func fileLimit() int { return DefaultMaxTotal * 4 / 3 }
