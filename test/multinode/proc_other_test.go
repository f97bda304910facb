//go:build !linux

package multinode

import "os/exec"

// setChildAttrs does nothing where the kernel cannot kill orphaned
// children; the tests' cleanups stop the nodes.
func setChildAttrs(*exec.Cmd) {}
