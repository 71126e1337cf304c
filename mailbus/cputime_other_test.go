//go:build !unix

package mailbus_test

import "testing"

// reportCPU reports nothing where the process's CPU time is not at hand.
func reportCPU(*testing.B) (stop func()) { return func() {} }
