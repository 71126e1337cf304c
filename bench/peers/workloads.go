package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// env is what every run needs.
type env struct {
	cfg         config
	redisServer string // path of redis-server
}

// result is one side's figure for one run.
type result struct {
	Rate float64 // ops/s in the workload's unit
	Note string  // errors or losses, when there were any
}

// peer is a system messd is measured against in one workload.
type peer struct {
	name       string
	durability string
	goal       bool // messd is to reach the goal ratio over this peer
	run        func(ctx context.Context) (result, error)
}

// workload is one row group of the comparison.
type workload struct {
	name  string // as -workloads names it
	title string
	unit  string
	peers []peer
}

func (e *env) workload(name string) workload {
	switch name {
	case "locks":
		return workload{name: name, unit: "pairs/s",
			title: fmt.Sprintf("lock acquire+release pairs, %d clients, one name each, 10 s TTL; Redis SET NX PX + Lua compare-and-delete, messd lease acquire + release as WebSocket lease frames, one connection per client", e.cfg.LockClients),
			peers: []peer{
				{name: "Redis", durability: redisDurability, goal: true, run: e.redisLocks},
				{name: "Go floor", durability: floorDurability, run: e.floorLocks},
			}}
	case "direct":
		return workload{name: name, unit: "msgs/s",
			title: fmt.Sprintf("durable direct messages, 100-byte payload, %d senders x %d in flight to %d inboxes; JetStream async publish to one file-store stream, messd mail-bus send over WebSocket", e.cfg.Senders, inFlight, directTargets),
			peers: []peer{
				{name: "JetStream default sync", durability: jetstreamDefaultDurability, goal: true,
					run: func(ctx context.Context) (result, error) { return e.jetstreamDirect(ctx, "default") }},
				{name: "JetStream fsync always", durability: jetstreamAlwaysDurability,
					run: func(ctx context.Context) (result, error) { return e.jetstreamDirect(ctx, "always") }},
			}}
	case "fanout":
		return workload{name: name, unit: "deliveries/s",
			title: fmt.Sprintf("fan-out, 1 publisher to %d subscribers each on its own connection, 100-byte payload; NATS core publish, messd mail-bus publish over WebSocket", e.cfg.Subscribers),
			peers: []peer{{name: "NATS core", durability: natsCoreDurability, goal: true, run: e.natsFanout}}}
	}
	panic("unknown workload " + name) // parseConfig admits only the names above
}

// versions names what runs on each side.
func (e *env) versions(ctx context.Context) (string, error) {
	var parts []string
	for _, v := range []struct {
		name string
		cmd  []string
	}{
		{"messd", []string{filepath.Join(e.cfg.Bin, "messd"), "version"}},
		{"redis", []string{e.redisServer, "--version"}},
		{"nats", []string{filepath.Join(e.cfg.Bin, "nats-server"), "--version"}},
	} {
		out, err := exec.CommandContext(ctx, v.cmd[0], v.cmd[1:]...).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", strings.Join(v.cmd, " "), err)
		}
		parts = append(parts, versionOf(string(out)))
	}
	return strings.Join(parts, "; "), nil
}

// versionOf shortens a --version line: "Redis server v=7.0.15 sha=..." to
// "Redis server 7.0.15".
func versionOf(line string) string {
	line = strings.TrimSpace(line)
	if i := strings.Index(line, " v="); i >= 0 {
		v, _, _ := strings.Cut(line[i+3:], " ")
		return line[:i] + " " + v
	}
	return line
}
