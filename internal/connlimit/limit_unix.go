//go:build unix

package connlimit

import "syscall"

// fileLimit is the soft limit on open files, or DefaultMaxTotal's worth
// when it cannot be read.
func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return DefaultMaxTotal * 4 / 3
	}
	return int(rl.Cur)
}
