package webapp_test

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill messd if the test binary dies first
// (a -timeout panic), so no server outlives its test.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
