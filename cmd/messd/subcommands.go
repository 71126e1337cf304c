package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// version is the release this binary was built as; the container build sets
// it with -ldflags "-X main.version=...".
var version = "dev"

// subcommand runs the helper commands: "messd healthcheck" and "messd
// version", which the container image needs without a shell or curl in it,
// "messd admin" and "messd migrate". ok is false when args name none of
// them, so messd serves as usual.
func subcommand(args []string, getenv func(string) string, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "healthcheck":
		return healthcheck(args[1:], getenv, stdout, stderr), true
	case "version":
		fmt.Fprintln(stdout, versionLine())
		return 0, true
	case "admin":
		return adminMain(args[1:], getenv, stdout, stderr), true
	case "migrate":
		return migrateMain(args[1:], getenv, stdout, stderr), true
	}
	return 0, false
}

// healthcheck asks a running messd for GET /health and exits 0 only for a
// 200 answer whose status is "ok", printing one line either way. Docker's
// HEALTHCHECK and Kubernetes exec probes run it inside the container, so it
// defaults to the loopback address of the port messd listens on there.
func healthcheck(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("messd healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "", "health URL to check; default http://127.0.0.1:$PORT/health, or the port of ADDR")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *target == "" {
		u, err := localHealthURL(getenv)
		if err != nil {
			fmt.Fprintln(stderr, "unhealthy:", err)
			return 1
		}
		*target = u
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := checkHealth(ctx, *target); err != nil {
		fmt.Fprintf(stderr, "unhealthy: %s: %v\n", *target, err)
		return 1
	}
	fmt.Fprintf(stdout, "healthy: %s\n", *target)
	return 0
}

// localHealthURL is where messd listens according to the same ADDR and PORT
// it reads; a wildcard or empty host becomes 127.0.0.1.
func localHealthURL(getenv func(string) string) (string, error) {
	addr := getenv("ADDR")
	if addr == "" {
		port := getenv("PORT")
		if port == "" {
			port = "3000"
		}
		addr = ":" + port
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("invalid listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/health", nil
}

// checkHealth neither uses a proxy nor follows redirects: the answer must
// come from the server at target itself.
func checkHealth(ctx context.Context, target string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err // the line already names the URL
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	derr := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	switch {
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d", resp.StatusCode)
	case derr != nil:
		return fmt.Errorf("unreadable body: %w", derr)
	case body.Status != "ok":
		return fmt.Errorf("status %q", body.Status)
	}
	return nil
}

// buildInfo is what a binary knows of its build: /health, the
// mess_build_info metric and "messd version" report it.
type buildInfo struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"` // "+modified" when built from a dirty tree
	Time      string `json:"revision_time,omitempty"`
	GoVersion string `json:"go_version"`
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		var dirty bool
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				bi.Revision = s.Value
			case "vcs.time":
				bi.Time = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if bi.Revision != "" && dirty {
			bi.Revision += "+modified"
		}
	}
	return bi
}

// versionLine is the version, the commit the binary was built from when the
// build recorded one, and the Go toolchain and platform.
func versionLine() string {
	bi := readBuildInfo()
	var b strings.Builder
	fmt.Fprintf(&b, "messd %s", bi.Version)
	if bi.Revision != "" {
		fmt.Fprintf(&b, " revision %s", bi.Revision)
		if bi.Time != "" {
			fmt.Fprintf(&b, " at %s", bi.Time)
		}
	}
	fmt.Fprintf(&b, " %s %s/%s", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	return b.String()
}
