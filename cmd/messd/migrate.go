package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
)

// The "messd migrate" command copies one store into another, so a
// deployment that outgrows a disk moves into a bucket (or back) and keeps
// its history, keys and inboxes. It copies keys, never reads what is in
// them: whatever layout the services write today or later moves as it is.

const migrateUsage = `usage: messd migrate -from STORE -to STORE [-workers N] [-force] [-verify] [S3 flags]

Copies every object of one store into another, byte for byte under the same
key, so a messd started on the target serves the same exchanges, histories,
keys, inboxes and leases. A STORE is one of
  dir:PATH              a data directory (what STORAGE_PATH names)
  s3                    the bucket and prefix in S3_BUCKET and S3_PREFIX
  s3:BUCKET[/PREFIX]    another bucket or prefix at the same endpoint
Both S3 sides are reached with messd's settings: S3_ENDPOINT, S3_ACCESS_KEY,
S3_SECRET_KEY, S3_REGION and S3_USE_SSL, or the -s3-* flags below.

Owner records (owners/) are not copied: the first messd on the target starts
its own. Neither store may be in use: a data directory is locked as messd
locks it, and on S3 the command claims the owner record as a standby would,
waiting up to MESS_OWNER_TIMEOUT for a silent writer and refusing while one
is alive. A target that holds objects the source does not have, or that
differ from the source's, is refused unless -force is given. A target that
holds only part of this source, left by an interrupted run, is not refused:
the same command again copies what is missing.

Progress goes to stderr, the summary to stdout. Exit status: 0 copied and
checked, 1 refused or failed, 2 bad usage.

Flags:
`

// notMigrated are key prefixes that mean something only in the store that
// holds them: owner records (package ownership; the target's first writer
// starts its own) and the probes of storage.VerifyConditionalWrites.
var notMigrated = []string{"owners/", "probe/"}

// storeSpec is one side of a migration.
type storeSpec struct {
	name string // as printed: dir:/abs/path, s3:bucket/prefix/
	dir  string // absolute; empty on S3
	s3   s3Settings
}

// parseStoreSpec reads dir:PATH, s3 or s3:BUCKET[/PREFIX]; base holds the
// S3 settings from the environment and flags.
func parseStoreSpec(spec string, base s3Settings) (storeSpec, error) {
	kind, arg, hasArg := strings.Cut(spec, ":")
	switch {
	case kind == "dir" && arg != "":
		abs, err := filepath.Abs(arg)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{name: "dir:" + abs, dir: abs}, nil
	case kind == "s3" && (!hasArg || arg != ""):
		s := base
		if hasArg {
			s.bucket, s.prefix, _ = strings.Cut(arg, "/")
		}
		if s.bucket == "" {
			return storeSpec{}, fmt.Errorf("%q names no bucket: set S3_BUCKET (or -s3-bucket), or write s3:BUCKET", spec)
		}
		if s.endpoint == "" {
			return storeSpec{}, fmt.Errorf("%q: S3_ENDPOINT (or -s3-endpoint) is not set", spec)
		}
		if s.prefix = strings.Trim(s.prefix, "/"); s.prefix != "" {
			if err := storage.ValidKey(s.prefix); err != nil {
				return storeSpec{}, fmt.Errorf("%q: prefix %q is not a storage key", spec, s.prefix)
			}
			s.prefix += "/"
		}
		return storeSpec{name: "s3:" + s.bucket + "/" + s.prefix, s3: s}, nil
	}
	return storeSpec{}, fmt.Errorf("want dir:PATH, s3 or s3:BUCKET[/PREFIX], got %q", spec)
}

// overlaps reports whether a and b share objects: one directory inside
// the other, or one prefix of a bucket under the other (both S3 sides use
// one endpoint).
func (a storeSpec) overlaps(b storeSpec) bool {
	switch {
	case a.dir != "" && b.dir != "":
		return within(realPath(a.dir), realPath(b.dir)) || within(realPath(b.dir), realPath(a.dir))
	case a.dir == "" && b.dir == "":
		return a.s3.bucket == b.s3.bucket && (strings.HasPrefix(a.s3.prefix, b.s3.prefix) || strings.HasPrefix(b.s3.prefix, a.s3.prefix))
	}
	return false
}

func within(parent, child string) bool {
	rel, err := filepath.Rel(parent, child)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// realPath resolves symbolic links where the path exists.
func realPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// migrateCmd is a parsed "messd migrate".
type migrateCmd struct {
	from, to           storeSpec
	workers            int
	force, verify      bool
	heartbeat, timeout time.Duration
}

// parseMigrate checks everything that can be checked before a store is
// touched.
func parseMigrate(args []string, getenv func(string) string, stderr io.Writer) (migrateCmd, error) {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	vars := envReader{getenv: getenv}
	useSSL := vars.boolean("S3_USE_SSL", false)
	heartbeat := vars.duration("MESS_OWNER_HEARTBEAT", 2*time.Second, false)
	timeout := vars.duration("MESS_OWNER_TIMEOUT", 10*time.Second, false)
	if vars.err != nil {
		return migrateCmd{}, vars.err
	}
	fs := flag.NewFlagSet("messd migrate", flag.ContinueOnError)
	// Errors are reported in one line below; -h prints the whole usage.
	fs.SetOutput(io.Discard)
	from := fs.String("from", "", "the store to copy: dir:PATH, s3 or s3:BUCKET[/PREFIX]")
	to := fs.String("to", "", "the store to copy into: dir:PATH, s3 or s3:BUCKET[/PREFIX]")
	var m migrateCmd
	fs.IntVar(&m.workers, "workers", 8, "objects copied at once (1 to 256)")
	fs.BoolVar(&m.force, "force", false, "copy into a target that holds other data: overwrite the keys the source has, leave the others")
	fs.BoolVar(&m.verify, "verify", false, "at the end, read every object back from both stores and compare the bytes")
	s3 := s3Flags(fs, env, useSSL)
	fs.DurationVar(&m.heartbeat, "owner-heartbeat", heartbeat, "how often an S3 store's owner record is read and renewed (MESS_OWNER_HEARTBEAT)")
	fs.DurationVar(&m.timeout, "owner-timeout", timeout, "how long an S3 store's owner record must stay unchanged before its writer counts as stopped (MESS_OWNER_TIMEOUT)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, migrateUsage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
		}
		return m, err
	}
	switch {
	case fs.NArg() > 0:
		return m, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case *from == "":
		return m, errors.New("-from is required")
	case *to == "":
		return m, errors.New("-to is required")
	case m.workers < 1 || m.workers > 256:
		return m, fmt.Errorf("-workers: want 1 to 256, got %d", m.workers)
	case m.heartbeat <= 0 || m.timeout < 3*m.heartbeat:
		return m, fmt.Errorf("-owner-timeout (%v) must be at least three heartbeats (-owner-heartbeat %v)", m.timeout, m.heartbeat)
	}
	var err error
	if m.from, err = parseStoreSpec(*from, *s3); err != nil {
		return m, fmt.Errorf("-from: %w", err)
	}
	if m.to, err = parseStoreSpec(*to, *s3); err != nil {
		return m, fmt.Errorf("-to: %w", err)
	}
	if m.from.overlaps(m.to) {
		return m, fmt.Errorf("-from %s and -to %s overlap: one holds the other's objects", m.from.name, m.to.name)
	}
	return m, nil
}

// migrateMain runs "messd migrate".
func migrateMain(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m, err := parseMigrate(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "messd migrate: %v (messd migrate -h for help)\n", err)
		return 2
	}
	if err := m.run(ctx, stdout, stderr); err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted: what was copied stays, and the same command again finishes the copy")
		}
		fmt.Fprintln(stderr, "messd migrate:", err)
		return 1
	}
	return 0
}

func (m migrateCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "messd migrate: "+format+"\n", args...)
	}
	src, closeSrc, err := m.open(ctx, m.from, "source", 0, stderr)
	if err != nil {
		return err
	}
	defer closeSrc()
	dst, closeDst, err := m.open(ctx, m.to, "target", src.epoch(), stderr)
	if err != nil {
		return err
	}
	defer closeDst()
	c := copier{src: src.store, dst: dst.store, workers: m.workers, force: m.force, verify: m.verify, logf: logf, every: time.Second}
	// A claim lost midway (the store unreachable for half the timeout)
	// lets a messd in: stop copying.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for _, side := range []opened{src, dst} {
		if side.owner != nil {
			go func() {
				select {
				case <-side.owner.Lost():
					cancel(fmt.Errorf("lost the claim on the %s: %w", side.role, side.owner.Err()))
				case <-ctx.Done():
				}
			}()
		}
	}
	res, err := c.run(ctx)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		return err
	}
	fmt.Fprintln(stdout, res.summary(m.from.name, m.to.name))
	return nil
}

// opened is one side of a migration, opened and kept from messd.
type opened struct {
	role  string
	store storage.Store
	owner *ownership.Ownership // S3 only
}

// epoch is the source's owner epoch, above every epoch in its logs; 0 for
// a directory, whose logs carry none.
func (o opened) epoch() uint64 {
	if o.owner == nil {
		return 0
	}
	return o.owner.Epoch()
}

// open opens one side as messd would and keeps messd out of it while the
// migration runs: the directory's lock, or on S3 the owner record.
// minEpoch is the lowest epoch the target's owner record may take: the
// source's (the lines copied carry epochs up to it), so the next messd on
// the target fences the logs above every epoch in them.
func (m migrateCmd) open(ctx context.Context, s storeSpec, role string, minEpoch uint64, stderr io.Writer) (opened, func(), error) {
	o := opened{role: role}
	if s.dir != "" {
		if role == "source" {
			// Never copy an empty store made where a mistyped path pointed.
			if fi, err := os.Stat(s.dir); err != nil || !fi.IsDir() {
				return o, nil, fmt.Errorf("the source %s is not a data directory", s.dir)
			}
		}
		st, closeStore, err := openStore(ctx, config{storageType: "filesystem", storagePath: s.dir})
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return o, nil, fmt.Errorf("the %s %s is in use by a running messd: stop it first", role, s.dir)
		}
		if err != nil {
			return o, nil, fmt.Errorf("the %s %s: %w", role, s.dir, err)
		}
		o.store = st
		return o, closeStore, nil
	}
	st, _, err := openStore(ctx, config{storageType: "s3", s3: s.s3})
	if err != nil {
		return o, nil, fmt.Errorf("the %s %s: %w", role, s.name, err)
	}
	owner, err := claimIdle(ctx, st, "messd migrate", "the "+role, m.heartbeat, m.timeout, minEpoch, stderr)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return o, nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return o, nil, fmt.Errorf("the %s %s is in use by a running messd (its owner record %s kept changing for %v): stop it first", role, s.name, ownerKey, m.timeout)
	default:
		return o, nil, fmt.Errorf("the %s %s: claiming %s: %w", role, s.name, ownerKey, err)
	}
	o.store, o.owner = st, owner
	return o, func() { owner.Release(context.WithoutCancel(ctx)) }, nil
}

// copier copies every object of src (but those under notMigrated) into dst.
type copier struct {
	src, dst storage.Store
	workers  int
	force    bool // copy over a target holding other data
	verify   bool // compare every object's bytes at the end
	logf     func(format string, args ...any)
	every    time.Duration // between progress lines
}

// copyResult counts what a copy did.
type copyResult struct {
	objects, bytes int64 // in the source
	copied         int64 // written to the target: created or overwritten
	overwritten    int64 // of copied, objects the target held with other bytes
	present        int64 // already on the target with the same bytes
	foreign        int   // on the target, not in the source: left alone
	verified       bool  // every object's bytes compared
	took           time.Duration
}

func (r copyResult) summary(from, to string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "migrated %s to %s: %s, %s in %v (%d copied, %d already there, %d overwritten)",
		from, to, objects(int(r.objects)), formatBytes(r.bytes), r.took.Round(time.Millisecond), r.copied-r.overwritten, r.present, r.overwritten)
	if r.verified {
		b.WriteString("; verified: every object's bytes match")
	} else {
		b.WriteString("; checked: the target lists every object (-verify compares the bytes)")
	}
	if r.foreign > 0 {
		fmt.Fprintf(&b, "; %s of the target that the source does not have left as they were", objects(r.foreign))
	}
	return b.String()
}

// errTargetHoldsData is the refusal of a target holding other data.
var errTargetHoldsData = errors.New("the target already holds other data")

func (c *copier) run(ctx context.Context) (res copyResult, err error) {
	start := time.Now()
	defer func() { res.took = time.Since(start) }()
	srcKeys, left, err := migratedKeys(ctx, c.src)
	if err != nil {
		return res, fmt.Errorf("listing the source: %w", err)
	}
	dstKeys, _, err := migratedKeys(ctx, c.dst)
	if err != nil {
		return res, fmt.Errorf("listing the target: %w", err)
	}
	res.objects = int64(len(srcKeys))
	c.logf("the source holds %s (not copied: %d under %s); the target %s",
		objects(len(srcKeys)), left, strings.Join(notMigrated, " or "), objects(len(dstKeys)))

	inSource := make(map[string]bool, len(srcKeys))
	for _, k := range srcKeys {
		inSource[k] = true
	}
	onTarget := make(map[string]bool, len(dstKeys))
	var foreign []string
	for _, k := range dstKeys {
		onTarget[k] = true
		if !inSource[k] {
			foreign = append(foreign, k)
		}
	}
	res.foreign = len(foreign)
	if len(foreign) > 0 && !c.force {
		return res, fmt.Errorf("%w: %s the source does not have (first: %s); "+
			"-force copies over it: it overwrites the objects the source has and leaves the others as they are",
			errTargetHoldsData, objects(len(foreign)), foreign[0])
	}
	var shared, todo []string
	for _, k := range srcKeys {
		if onTarget[k] {
			shared = append(shared, k)
		} else {
			todo = append(todo, k)
		}
	}

	// What both hold is either this source's, left by an interrupted run,
	// or another store's data: compare before writing anything.
	var mu sync.Mutex
	differ := map[string]string{} // key -> the target's version
	var sameBytes atomic.Int64
	err = c.each(ctx, "comparing what the target holds", shared, func(ctx context.Context, k string) (int64, error) {
		a, err := c.src.Get(ctx, k)
		if err != nil {
			return 0, err
		}
		b, err := c.dst.Get(ctx, k)
		if err != nil {
			return 0, err
		}
		if bytes.Equal(a.Data, b.Data) {
			sameBytes.Add(int64(len(a.Data)))
			return int64(len(a.Data)), nil
		}
		mu.Lock()
		differ[k] = b.Version
		mu.Unlock()
		return int64(len(a.Data)), nil
	})
	if err != nil {
		return res, err
	}
	res.present = int64(len(shared) - len(differ))
	res.bytes = sameBytes.Load()
	if len(differ) > 0 && !c.force {
		return res, fmt.Errorf("%w: %s that differ from the source's (first: %s), so it is no interrupted copy of this source; "+
			"-force copies over it: it overwrites the objects the source has and leaves the others as they are",
			errTargetHoldsData, objects(len(differ)), slices.Min(slices.Collect(maps.Keys(differ))))
	}
	if len(differ) > 0 {
		c.logf("-force: overwriting %s of the target that differ from the source's", objects(len(differ)))
		todo = slices.AppendSeq(todo, maps.Keys(differ))
		slices.Sort(todo)
	}
	if len(foreign) > 0 {
		c.logf("-force: leaving %s of the target that the source does not have as they are (first: %s)", objects(len(foreign)), foreign[0])
	}
	if res.present > 0 {
		c.logf("%s on the target already with the same bytes: not copied again", objects(int(res.present)))
	}

	var copied, overwritten, copiedBytes atomic.Int64
	err = c.each(ctx, "copying", todo, func(ctx context.Context, k string) (int64, error) {
		obj, err := c.src.Get(ctx, k)
		if err != nil {
			return 0, err
		}
		version, overwrite := differ[k] // read-only by now
		if overwrite {
			_, err = c.dst.Update(ctx, k, obj.Data, version)
		} else {
			_, err = c.dst.Create(ctx, k, obj.Data)
		}
		if errors.Is(err, storage.ErrExists) || errors.Is(err, storage.ErrVersionMismatch) {
			// A retried write whose first try landed, or another writer.
			if cur, gerr := c.dst.Get(ctx, k); gerr == nil && bytes.Equal(cur.Data, obj.Data) {
				err = nil
			} else {
				err = fmt.Errorf("%s changed on the target during the migration: is something else writing to it? (%w)", k, err)
			}
		}
		if err != nil {
			return 0, err
		}
		copied.Add(1)
		if overwrite {
			overwritten.Add(1)
		}
		copiedBytes.Add(int64(len(obj.Data)))
		return int64(len(obj.Data)), nil
	})
	res.copied, res.overwritten = copied.Load(), overwritten.Load()
	res.bytes += copiedBytes.Load()
	if err != nil {
		return res, err
	}

	after, _, err := migratedKeys(ctx, c.dst)
	if err != nil {
		return res, fmt.Errorf("listing the target: %w", err)
	}
	there := make(map[string]bool, len(after))
	for _, k := range after {
		there[k] = true
	}
	var missing []string
	for _, k := range srcKeys {
		if !there[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 || len(after) != len(srcKeys)+len(foreign) {
		return res, fmt.Errorf("check failed: the target lists %d objects, want %d; %d of the source's are missing (first: %s)",
			len(after), len(srcKeys)+len(foreign), len(missing), append(missing, "none")[0])
	}
	c.logf("checked: the target lists all %s", objects(len(srcKeys)))
	if c.verify {
		err = c.each(ctx, "verifying", srcKeys, func(ctx context.Context, k string) (int64, error) {
			a, err := c.src.Get(ctx, k)
			if err != nil {
				return 0, err
			}
			b, err := c.dst.Get(ctx, k)
			if err != nil {
				return 0, fmt.Errorf("verify: %w", err)
			}
			if !bytes.Equal(a.Data, b.Data) {
				return 0, fmt.Errorf("verify failed: %s differs on the target (%d bytes, want %d)", k, len(b.Data), len(a.Data))
			}
			return int64(len(a.Data)), nil
		})
		if err != nil {
			return res, err
		}
		res.verified = true
	}
	return res, nil
}

// migratedKeys lists s's keys but those under notMigrated, and counts
// those.
func migratedKeys(ctx context.Context, s storage.Store) (keys []string, left int, err error) {
next:
	for k, err := range storage.Keys(ctx, s, "") {
		if err != nil {
			return nil, 0, err
		}
		for _, p := range notMigrated {
			if strings.HasPrefix(k, p) {
				left++
				continue next
			}
		}
		keys = append(keys, k)
	}
	return keys, left, nil
}

// each runs fn on every key with c.workers goroutines, stops at the first
// error, and reports progress every c.every and once at the end. fn
// returns the bytes it handled.
func (c *copier) each(ctx context.Context, phase string, keys []string, fn func(context.Context, string) (int64, error)) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var done, size atomic.Int64
	report := func() {
		c.logf("%s: %d/%d objects, %s", phase, done.Load(), len(keys), formatBytes(size.Load()))
	}
	stopReports := make(chan struct{})
	var reporter sync.WaitGroup
	reporter.Go(func() {
		t := time.NewTicker(c.every)
		defer t.Stop()
		for {
			select {
			case <-stopReports:
				return
			case <-t.C:
				report()
			}
		}
	})
	next := make(chan string)
	var workers sync.WaitGroup
	for range min(c.workers, len(keys)) {
		workers.Go(func() {
			for k := range next {
				if ctx.Err() != nil {
					continue
				}
				n, err := fn(ctx, k)
				if err != nil {
					cancel(err)
					continue
				}
				done.Add(1)
				size.Add(n)
			}
		})
	}
feed:
	for _, k := range keys {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	workers.Wait()
	close(stopReports)
	reporter.Wait()
	report()
	return context.Cause(ctx)
}

func objects(n int) string {
	if n == 1 {
		return "1 object"
	}
	return fmt.Sprintf("%d objects", n)
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
