package mailbus

import (
	"sync/atomic"
	"testing"
)

// The committer wakes sessions once per run of commits that are already
// durable, but a run is bounded: a committer that never catches up with
// the journal must still wake them.
func TestCommitterWakesWithinBoundedRuns(t *testing.T) {
	const commits = 4 * maxWakeRun
	ex := &exchange{commits: make(chan *commit, commits), wakeRun: 1}
	var applied, firstWake, wakes atomic.Int64
	firstWake.Store(-1)
	s := &session{hook: func() {
		wakes.Add(1)
		firstWake.CompareAndSwap(-1, applied.Load())
	}}
	for range commits {
		c := &commit{apply: func(error) {
			applied.Add(1)
			ex.wakeLater(s)
		}}
		c.done.Store(true) // durable already
		ex.commits <- c
	}
	close(ex.commits)
	ex.committers.Add(1)
	ex.committer()
	if got := firstWake.Load(); got < 1 || got > maxWakeRun {
		t.Errorf("first wake after %d commits, want 1..%d", got, maxWakeRun)
	}
	// Each session once per run, however many of the run's commits name it.
	if got := wakes.Load(); got < commits/maxWakeRun || got > commits/maxWakeRun+1 {
		t.Errorf("%d wakes for %d commits, want about %d", got, commits, commits/maxWakeRun)
	}
}
