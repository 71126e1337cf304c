package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/storage/s3store"
)

// A spawned deployment: messd built from this module and run on a fresh
// data directory (-spawn fs) or a fresh bucket of a MinIO server started
// for the run (-spawn minio), so one command measures either backend.
type deployment struct {
	dir    string
	bin    string
	env    []string
	minio  *miniotest.Server
	bucket string
	procs  []*exec.Cmd
	log    io.Writer
}

// spawn builds messd and prepares the backend; start runs processes on it.
func spawn(ctx context.Context, backend string, log io.Writer) (*deployment, error) {
	dir, err := os.MkdirTemp("", "messbench-")
	if err != nil {
		return nil, err
	}
	d := &deployment{dir: dir, bin: filepath.Join(dir, "messd"), log: log}
	build := exec.CommandContext(ctx, "go", "build", "-o", d.bin, "./cmd/messd")
	build.Stderr = log
	if err := build.Run(); err != nil {
		d.close()
		return nil, fmt.Errorf("build messd (run messbench from the module root): %w", err)
	}
	// The load comes from one address and registers agents in bulk.
	d.env = []string{"MESS_OPEN_REGISTRATION=true", "MESS_MAX_CONNS_PER_IP=-1", "LOG_LEVEL=warn"}
	switch backend {
	case "fs":
		d.env = append(d.env, "STORAGE_TYPE=filesystem", "STORAGE_PATH="+filepath.Join(dir, "data"))
	case "minio":
		if d.minio, err = miniotest.Start(filepath.Join(dir, "minio")); err != nil {
			d.close()
			return nil, err
		}
		bucket, err := d.minio.NewBucket(ctx)
		if err != nil {
			d.close()
			return nil, err
		}
		d.bucket = bucket
		d.env = append(d.env, "STORAGE_TYPE=s3", "S3_ENDPOINT="+d.minio.Endpoint, "S3_BUCKET="+bucket,
			"S3_ACCESS_KEY="+miniotest.AccessKey, "S3_SECRET_KEY="+miniotest.SecretKey)
	default:
		d.close()
		return nil, fmt.Errorf("-spawn %q: want fs or minio", backend)
	}
	return d, nil
}

// start runs one messd with extra environment and returns it and its URL.
func (d *deployment) start(extra ...string) (*exec.Cmd, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(d.bin)
	cmd.Env = append(append(append(os.Environ(), d.env...), extra...), "ADDR="+addr)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	d.procs = append(d.procs, cmd)
	return cmd, "http://" + addr, nil
}

// waitStatus polls url until it answers want, and says how long it took.
func waitStatus(ctx context.Context, url string, want int, within time.Duration) (time.Duration, error) {
	start := time.Now()
	c := http.Client{Timeout: time.Second}
	for {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return time.Since(start), nil
			}
		}
		if time.Since(start) > within {
			return 0, fmt.Errorf("%s did not answer %d within %v", url, want, within)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (d *deployment) close() {
	for _, p := range d.procs {
		if p.ProcessState == nil {
			p.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				p.Process.Kill()
				<-done
			}
		}
	}
	if d.minio != nil {
		d.minio.Stop()
	}
	os.RemoveAll(d.dir)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// runSpawned starts one messd on the backend, runs the scenario against it
// and stops everything.
func runSpawned(ctx context.Context, backend string, o options, fn func(context.Context, options) error) error {
	d, err := spawn(ctx, backend, os.Stderr)
	if err != nil {
		return err
	}
	defer d.close()
	_, url, err := d.start()
	if err != nil {
		return err
	}
	if _, err := waitStatus(ctx, url+"/ready", 200, time.Minute); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "spawned messd on %s at %s\n", backend, url)
	o.URL = url
	return fn(ctx, o)
}

// benchTakeover measures, -n times, how long a standby takes to serve after
// the writer is killed with SIGKILL, with the default owner settings
// (heartbeat 2s, timeout 10s) unless MESS_OWNER_* are set. Needs -spawn
// minio.
func benchTakeover(ctx context.Context, backend string, o options) error {
	if backend != "minio" {
		return errors.New("takeover: run with -spawn minio")
	}
	d, err := spawn(ctx, backend, io.Discard)
	if err != nil {
		return err
	}
	defer d.close()
	rounds := max(o.N, 3)
	writer, wurl, err := d.start()
	if err != nil {
		return err
	}
	if _, err := waitStatus(ctx, wurl+"/ready", 200, time.Minute); err != nil {
		return err
	}
	timeout := 10 * time.Second
	if v := os.Getenv("MESS_OWNER_TIMEOUT"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil {
			return err
		}
	}
	for i := range rounds {
		standby, surl, err := d.start()
		if err != nil {
			return err
		}
		if _, err := waitStatus(ctx, surl+"/health", 200, time.Minute); err != nil {
			return err
		}
		time.Sleep(time.Second) // let the standby watch a few heartbeats
		writer.Process.Kill()
		writer.Wait()
		took, err := waitStatus(ctx, surl+"/ready", 200, timeout+time.Minute)
		if err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "round %d: standby serving %.2fs after kill -9 (owner timeout %v; target under %v)\n",
			i+1, took.Seconds(), timeout, timeout+3*time.Second)
		writer, wurl = standby, surl
	}
	return nil
}

// benchS3Floor measures the store alone: one writer creating objects one
// after another, as a fenced log does (one slot in flight per log), with
// -n bytes each (default 16 KiB, a batch of about 64 creates). It prints
// the PUT rate and latency of the MinIO it spawns: a log's creates per
// second are at most this rate times the batch size.
func benchS3Floor(ctx context.Context, o options) error {
	d, err := spawn(ctx, "minio", io.Discard)
	if err != nil {
		return err
	}
	defer d.close()
	st, err := s3store.New(ctx, s3store.Config{Endpoint: d.minio.Endpoint, Bucket: d.bucket,
		AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey})
	if err != nil {
		return err
	}
	size := o.N
	if size <= 0 {
		size = 16 << 10
	}
	data := bytes.Repeat([]byte("x"), size-1)
	data = append(data, '\n')
	for _, logs := range []int{1, max(o.Concurrency/16, 4)} {
		var lat []time.Duration
		var mu sync.Mutex
		start := time.Now()
		var wg sync.WaitGroup
		for l := range logs {
			wg.Go(func() {
				for i := 0; time.Since(start) < o.Duration; i++ {
					t := time.Now()
					if _, err := st.Create(ctx, fmt.Sprintf("floor/%d/%d/s%020d.jsonl", logs, l, i), data); err != nil {
						fmt.Fprintln(o.Out, "create:", err)
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(t))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		took := time.Since(start)
		slices.Sort(lat)
		if len(lat) == 0 {
			return errors.New("no object created")
		}
		fmt.Fprintf(o.Out, "MinIO create-only PUTs of %d bytes, %d log(s) one at a time: %d in %.1fs = %.0f/s; latency p50 %v p99 %v\n",
			size, logs, len(lat), took.Seconds(), float64(len(lat))/took.Seconds(),
			lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond))
	}
	return nil
}
