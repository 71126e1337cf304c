package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// messdDurability is what a messd answer means in every workload here.
const messdDurability = "filesystem store (the default) on a fresh data directory; a lease operation or a mail-bus " +
	"message is appended to its journal and fdatasynced before it is answered, one fdatasync per batch of " +
	"concurrent writes (group commit)"

// messd runs one workload against a fresh messd and returns what
// cmd/messbench measured. It is the only place that knows how the messd
// side is driven: each workload is a messbench scenario, so a faster client
// path (lease operations over the WebSocket, say) is switched on in that
// scenario and shows up here unchanged.
func (e *env) messd(ctx context.Context, workload string) (result, error) {
	var args []string
	switch workload {
	case "locks":
		// Lease frames over WebSocket, one connection per client, as each
		// Redis client has its own connection.
		args = []string{"-scenario", "lease-ws", "-c", strconv.Itoa(e.cfg.LockClients), "-n", strconv.Itoa(e.cfg.LockClients)}
	case "direct":
		args = []string{"-scenario", "mailbus-direct", "-c", strconv.Itoa(e.cfg.Senders)}
	case "fanout":
		args = []string{"-scenario", "mailbus-fanout", "-n", strconv.Itoa(e.cfg.Subscribers)}
	default:
		return result{}, fmt.Errorf("no messd scenario for %q", workload)
	}
	port, err := freePort()
	if err != nil {
		return result{}, err
	}
	url := "http://" + loopback(port)
	srv, err := startServer(ctx, e.cfg.Dir, serverSpec{name: "messd", bin: filepath.Join(e.cfg.Bin, "messd"), env: []string{
		"ADDR=" + loopback(port),
		"STORAGE_TYPE=filesystem",
		"STORAGE_PATH=data",
		"LOG_LEVEL=warn",
		// The load comes from one address and registers agents in bulk.
		"MESS_OPEN_REGISTRATION=true",
		"MESS_MAX_CONNS_PER_IP=-1",
	}, ready: func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, "GET", url+"/ready", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %s", resp.Status)
		}
		return nil
	}})
	if err != nil {
		return result{}, err
	}
	args = append(args, "-url", url, "-d", e.cfg.Duration.String())
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(e.cfg.Bin, "messbench"), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	stopErr := srv.stop()
	if runErr != nil {
		return result{}, fmt.Errorf("messbench %s: %v: %s%s", strings.Join(args, " "), runErr, stdout.Bytes(), stderr.Bytes())
	}
	if stopErr != nil {
		return result{}, stopErr
	}
	return parseMessbench(workload, stdout.String())
}

var (
	// recorder.report's line: "<what>: N ok, E errors in 3.001s = 11149/s; ..."
	reportLine = regexp.MustCompile(`^(.*): (\d+) ok, (\d+) errors in \S+ = (\d+)/s`)
	// the fan-out's: "deliveries: N of M in 10.2s = 1234567 deliveries/s"
	deliveriesLine = regexp.MustCompile(`^deliveries: (\d+) of (\d+) in \S+ = (\d+) deliveries/s`)
)

// parseMessbench reads the figure for workload out of messbench's output.
func parseMessbench(workload, out string) (result, error) {
	var r result
	found := false
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimSpace(line)
		if m := reportLine.FindStringSubmatch(line); m != nil {
			what := m[1]
			errs, _ := strconv.ParseInt(m[3], 10, 64)
			mine := workload == "locks" && strings.HasPrefix(what, "lease acquire+release pairs") ||
				workload == "direct" && strings.HasPrefix(what, "direct messages accepted")
			if mine {
				r.Rate, _ = strconv.ParseFloat(m[4], 64)
				found = true
			}
			if errs > 0 && (mine || workload == "fanout" && strings.HasPrefix(what, "publish accepted")) {
				r.Note = fmt.Sprintf("%d errors", errs)
			}
		}
		if m := deliveriesLine.FindStringSubmatch(line); m != nil && workload == "fanout" {
			got, _ := strconv.ParseInt(m[1], 10, 64)
			want, _ := strconv.ParseInt(m[2], 10, 64)
			r.Rate, _ = strconv.ParseFloat(m[3], 64)
			found = true
			if got < want {
				r.Note = strings.TrimPrefix(r.Note+fmt.Sprintf(", %d of %d delivered", got, want), ", ")
			}
		}
	}
	if !found {
		return result{}, fmt.Errorf("no %s figure in messbench's output:\n%s", workload, out)
	}
	return r, nil
}
