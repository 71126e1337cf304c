// Command peers measures messd side by side with the systems a team would
// pick instead of it: Redis for locks, NATS JetStream for durable direct
// messages and NATS core for fan-out. In one invocation it runs each peer
// and messd on this machine, one after the other in rounds, with the same
// clients, workload and duration, each on a fresh loopback port and a fresh
// data directory, and prints both throughputs and messd's over the peer's
// for every round, then a summary.
//
// The run script beside this file builds what it needs and calls it:
//
//	bench/peers/run -rounds 3 -d 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if floorMain(os.Args[1:]) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parseConfig(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err == nil {
		err = run(ctx, cfg, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

// config is what the command line sets.
type config struct {
	Rounds      int
	Duration    time.Duration
	Workloads   []string // names from workloadNames, in the order given
	Order       string   // alternate, peer-first or messd-first
	Bin         string   // directory holding messd, messbench and nats-server
	Dir         string   // where each run's data directory is made
	LockClients int
	Senders     int
	Subscribers int
}

// workloadNames are the -workloads a run may name.
var workloadNames = []string{"locks", "direct", "fanout"}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.IntVar(&c.Rounds, "rounds", 3, "rounds; each runs every workload on the peer and on messd")
	fs.DurationVar(&c.Duration, "d", 10*time.Second, "how long each side runs each workload")
	workloads := fs.String("workloads", strings.Join(workloadNames, ","), "comma-separated: "+strings.Join(workloadNames, ", "))
	fs.StringVar(&c.Order, "order", "alternate", "who goes first in a round: alternate (the peer in odd rounds), peer-first or messd-first")
	fs.StringVar(&c.Bin, "bin", "", "directory holding messd, messbench and nats-server (the run script builds them)")
	fs.StringVar(&c.Dir, "dir", os.TempDir(), "where the servers' data directories are made; put it on the disk you mean to measure")
	fs.IntVar(&c.LockClients, "lock-clients", 32, "locks: clients, one name each")
	fs.IntVar(&c.Senders, "senders", 64, fmt.Sprintf("direct: senders, each with %d messages in flight", inFlight))
	fs.IntVar(&c.Subscribers, "subscribers", 1000, "fanout: subscribers of the one publisher")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case c.Rounds < 1:
		return config{}, fmt.Errorf("-rounds %d: need at least 1", c.Rounds)
	case c.Duration <= 0:
		return config{}, fmt.Errorf("-d %s: need a positive duration", c.Duration)
	case c.LockClients < 1 || c.Senders < 1 || c.Subscribers < 1:
		return config{}, errors.New("-lock-clients, -senders and -subscribers must be at least 1")
	case c.Bin == "":
		return config{}, errors.New("-bin is required (bench/peers/run sets it)")
	}
	switch c.Order {
	case "alternate", "peer-first", "messd-first":
	default:
		return config{}, fmt.Errorf("-order %q: want alternate, peer-first or messd-first", c.Order)
	}
	seen := map[string]bool{}
	for w := range strings.SplitSeq(*workloads, ",") {
		w = strings.TrimSpace(w)
		if w == "" || seen[w] {
			continue
		}
		if !slices.Contains(workloadNames, w) {
			return config{}, fmt.Errorf("-workloads: unknown %q (have %s)", w, strings.Join(workloadNames, ", "))
		}
		seen[w] = true
		c.Workloads = append(c.Workloads, w)
	}
	if len(c.Workloads) == 0 {
		return config{}, errors.New("-workloads names none")
	}
	return c, nil
}

// peerFirst reports whether the peers run before messd in round r
// (counted from 1).
func (c config) peerFirst(r int) bool {
	switch c.Order {
	case "peer-first":
		return true
	case "messd-first":
		return false
	}
	return r%2 == 1
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	raiseFileLimit()
	e := &env{cfg: cfg}
	for _, name := range []string{"messd", "messbench", "nats-server"} {
		p := filepath.Join(cfg.Bin, name)
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s: %w (bench/peers/run builds it)", name, err)
		}
	}
	var err error
	if e.redisServer, err = lookRedis(); err != nil {
		return err
	}
	ws := make([]workload, 0, len(cfg.Workloads))
	for _, name := range cfg.Workloads {
		ws = append(ws, e.workload(name))
	}
	if err := e.header(ctx, out, ws); err != nil {
		return err
	}
	var results []sample
	for r := 1; r <= cfg.Rounds; r++ {
		first := "peer first"
		if !cfg.peerFirst(r) {
			first = "messd first"
		}
		fmt.Fprintf(out, "\nround %d of %d (%s)\n", r, cfg.Rounds, first)
		for _, w := range ws {
			got, err := e.round(ctx, w, r, cfg.peerFirst(r))
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r, w.name, err)
			}
			printRound(out, w, got)
			results = append(results, got...)
		}
	}
	fmt.Fprintln(out)
	printSummary(out, ws, results, cfg.Rounds)
	fmt.Fprintf(out, "\nload average at the end: %s\n", loadAverage())
	return nil
}

// round runs one workload once on messd and once on each of its peers.
func (e *env) round(ctx context.Context, w workload, r int, peerFirst bool) ([]sample, error) {
	var (
		peers = make([]result, len(w.peers))
		messd result
		err   error
	)
	runPeers := func() error {
		for i, p := range w.peers {
			if peers[i], err = p.run(ctx); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
		return nil
	}
	runMessd := func() error {
		if messd, err = e.messd(ctx, w.name); err != nil {
			return fmt.Errorf("messd: %w", err)
		}
		return nil
	}
	steps := []func() error{runPeers, runMessd}
	if !peerFirst {
		steps[0], steps[1] = runMessd, runPeers
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	out := make([]sample, len(w.peers))
	for i, p := range w.peers {
		out[i] = sample{Round: r, Workload: w.name, Peer: p.name, PeerRate: peers[i].Rate, MessdRate: messd.Rate,
			Notes: joinNotes(peers[i].Note, messd.Note)}
	}
	return out, nil
}

func joinNotes(peer, messd string) string {
	var parts []string
	if peer != "" {
		parts = append(parts, "peer: "+peer)
	}
	if messd != "" {
		parts = append(parts, "messd: "+messd)
	}
	return strings.Join(parts, "; ")
}

// header prints the machine, the settings and each side's durability.
func (e *env) header(ctx context.Context, out io.Writer, ws []workload) error {
	fmt.Fprintf(out, "side by side on %s/%s, %d cores, load average %s; %s per run, %d rounds, order %s\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), loadAverage(), e.cfg.Duration, e.cfg.Rounds, e.cfg.Order)
	fmt.Fprintf(out, "data directories under %s (%s)\n", e.cfg.Dir, fsType(e.cfg.Dir))
	versions, err := e.versions(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "versions: %s\n", versions)
	fmt.Fprintln(out, "durability:")
	fmt.Fprintf(out, "  messd: %s\n", messdDurability)
	printed := map[string]bool{}
	for _, w := range ws {
		for _, p := range w.peers {
			if !printed[p.name] {
				printed[p.name] = true
				fmt.Fprintf(out, "  %s: %s\n", p.name, p.durability)
			}
		}
	}
	fmt.Fprintln(out, "workloads:")
	for _, w := range ws {
		fmt.Fprintf(out, "  %s: %s\n", w.name, w.title)
	}
	return nil
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// fsType names the file system under dir: on tmpfs an fsync costs nothing
// and durable figures mean little.
func fsType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "file system unknown"
	}
	switch st.Type {
	case 0x01021994:
		return "tmpfs: fsync is free here, durable figures are not comparable"
	case 0xEF53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("file system 0x%x", st.Type)
}

// raiseFileLimit lifts the open-file limit to its hard limit; the servers
// started from here inherit it, and a thousand subscribers need it.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
