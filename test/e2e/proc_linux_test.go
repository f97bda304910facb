package e2e

import (
	"os/exec"
	"syscall"
)

// setChildAttrs makes the kernel kill a started server if the test process
// dies without cleaning up (e.g. on a go test timeout).
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
