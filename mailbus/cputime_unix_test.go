//go:build unix

package mailbus_test

import (
	"syscall"
	"testing"
	"time"
)

// reportCPU makes b report the process's CPU time (user and system, every
// goroutine: client and server alike) per operation as cpu-ns/op. On a
// machine shared with other work it varies far less than the wall time.
// Call the function it returns when the measured work is done.
func reportCPU(b *testing.B) (stop func()) {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
