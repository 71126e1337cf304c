//go:build !linux

package webapp_test

import "os/exec"

func dieWithParent(cmd *exec.Cmd) {}
