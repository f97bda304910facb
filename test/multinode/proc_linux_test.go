package multinode

import (
	"os/exec"
	"syscall"
)

// setChildAttrs makes the kernel kill a started node if the test process
// dies without cleaning up (for example on a go test timeout).
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
