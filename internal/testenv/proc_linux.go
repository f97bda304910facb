package testenv

import (
	"os/exec"
	"syscall"
)

// SetChildAttrs makes the kernel kill a started process if the test
// process dies without cleaning up (for example on a go test timeout).
func SetChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
