//go:build !linux

package testenv

import "os/exec"

// SetChildAttrs does nothing where the kernel cannot kill orphaned
// children; the tests' cleanups stop them.
func SetChildAttrs(*exec.Cmd) {}
