package deploy_test

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case
	args string
	line int
}

type stage struct {
	from, name string
	insts      []instruction
}

type dockerfile struct {
	globalArgs []instruction // ARGs before the first FROM
	stages     []stage
}

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var insts []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(data), "\n") {
		s := strings.TrimSpace(line)
		if s == "" || strings.HasPrefix(s, "#") {
			continue // comments and blank lines, also between continuation lines
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(s, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(s)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		insts = append(insts, instruction{strings.ToUpper(cmd), strings.TrimSpace(args), start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: unterminated continuation at line %d", path, start)
	}
	var df dockerfile
	for _, in := range insts {
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--") })
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
		case len(df.stages) == 0 && in.cmd == "ARG":
			df.globalArgs = append(df.globalArgs, in)
		case len(df.stages) == 0:
			t.Fatalf("%s:%d: %s before FROM", path, in.line, in.cmd)
		default:
			df.stages[len(df.stages)-1].insts = append(df.stages[len(df.stages)-1].insts, in)
		}
	}
	return df
}

// buildArgs are the build's --build-arg values plus the platform arguments
// BuildKit predefines for a native linux build.
var buildArgs = map[string]string{
	"VERSION":       "v0.0.0-deploytest",
	"TARGETOS":      "linux",
	"TARGETARCH":    runtime.GOARCH,
	"BUILDPLATFORM": "linux/" + runtime.GOARCH,
}

// expand substitutes $VAR and ${VAR} as the Dockerfile frontend does, and
// fails on a variable that is not declared, rather than guessing.
func expand(t *testing.T, s string, vars map[string]string) string {
	t.Helper()
	return os.Expand(s, func(k string) string {
		v, ok := vars[k]
		if !ok {
			t.Fatalf("undeclared variable $%s in %q", k, s)
		}
		return v
	})
}

// declareArg applies an ARG instruction: the --build-arg value wins over
// the default.
func declareArg(in instruction, vars map[string]string) {
	name, def, _ := strings.Cut(in.args, "=")
	if v, ok := buildArgs[name]; ok {
		vars[name] = v
	} else {
		vars[name] = strings.Trim(def, `"`)
	}
}

// envPairs parses ENV's key=value pairs (the only form the Dockerfile uses).
func envPairs(t *testing.T, in instruction) [][2]string {
	t.Helper()
	var out [][2]string
	for _, w := range shellWords(t, in.args) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			t.Fatalf("line %d: ENV %q is not key=value", in.line, in.args)
		}
		out = append(out, [2]string{k, v})
	}
	return out
}

// shellWords splits a command line as sh does for the quoting the
// Dockerfile uses: blanks separate words, quotes group them.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// goBuild is the Dockerfile's go build step: its environment assignments,
// its arguments after "go build", and the stage's ENV.
type goBuild struct {
	env    []string
	args   []string
	output string // the -o argument
	stage  stage
}

// findGoBuild evaluates the builder stage up to its go build RUN line.
func findGoBuild(t *testing.T, df dockerfile) goBuild {
	t.Helper()
	global := map[string]string{}
	for _, in := range df.globalArgs {
		declareArg(in, global)
	}
	var found []goBuild
	for _, st := range df.stages {
		vars := map[string]string{}
		var stageEnv []string
		for _, in := range st.insts {
			switch in.cmd {
			case "ARG":
				declareArg(in, vars)
			case "ENV":
				for _, kv := range envPairs(t, in) {
					v := expand(t, kv[1], vars)
					vars[kv[0]] = v
					stageEnv = append(stageEnv, kv[0]+"="+v)
				}
			case "RUN":
				if !strings.Contains(in.args, "go build") {
					continue
				}
				words := shellWords(t, expand(t, in.args, vars))
				for len(words) > 0 && strings.HasPrefix(words[0], "--") {
					words = words[1:] // --mount=type=cache,...
				}
				b := goBuild{env: stageEnv, stage: st}
				for len(words) > 0 && assignment.MatchString(words[0]) {
					b.env = append(b.env, words[0])
					words = words[1:]
				}
				if len(words) < 2 || words[0] != "go" || words[1] != "build" {
					t.Fatalf("line %d: the build RUN line must be [VAR=value ...] go build ...; it is %q", in.line, in.args)
				}
				for _, w := range words {
					if strings.ContainsAny(w, ";|&") {
						t.Fatalf("line %d: the build RUN line must be one command, so the test builds what the image builds: %q", in.line, in.args)
					}
				}
				b.args = words[2:]
				for i, a := range b.args {
					if a == "-o" && i+1 < len(b.args) {
						b.output = b.args[i+1]
					}
				}
				found = append(found, b)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("found %d go build RUN lines, want 1", len(found))
	}
	return found[0]
}

// TestDockerfile_BuildStage checks the builder stage: a golang image of the
// go.mod toolchain, modules downloaded in their own layer before the source
// is copied, and a static, trimmed, versioned go build.
func TestDockerfile_BuildStage(t *testing.T) {
	df := parseDockerfile(t, "docker/Dockerfile")
	if len(df.stages) != 2 {
		t.Fatalf("%d stages, want 2 (build and runtime)", len(df.stages))
	}
	global := map[string]string{}
	for _, in := range df.globalArgs {
		declareArg(in, global)
	}
	build := df.stages[0]
	image := expand(t, build.from, global)
	gomod, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	if want := "golang:" + string(goVersion[1]); image != want {
		t.Errorf("builder image %q, want %q (go.mod's go %s)", image, want, goVersion[1])
	}

	// The order of the layers: go.mod and go.sum, go mod download, then
	// the rest of the source, then go build.
	step := func(match func(instruction) bool) int {
		for i, in := range build.insts {
			if match(in) {
				return i
			}
		}
		return -1
	}
	copyMod := step(func(in instruction) bool {
		f := strings.Fields(in.args)
		return in.cmd == "COPY" && slices.Contains(f, "go.mod") && slices.Contains(f, "go.sum")
	})
	download := step(func(in instruction) bool { return in.cmd == "RUN" && strings.Contains(in.args, "go mod download") })
	copyAll := step(func(in instruction) bool { return in.cmd == "COPY" && strings.HasPrefix(in.args, ". ") })
	compile := step(func(in instruction) bool { return in.cmd == "RUN" && strings.Contains(in.args, "go build") })
	if copyMod < 0 || download < 0 || copyAll < 0 || compile < 0 || !(copyMod < download && download < copyAll && copyAll < compile) {
		t.Errorf("builder steps at %d (COPY go.mod go.sum), %d (go mod download), %d (COPY . .), %d (go build): want them in that order", copyMod, download, copyAll, compile)
	}

	b := findGoBuild(t, df)
	if !slices.Contains(b.env, "CGO_ENABLED=0") {
		t.Errorf("go build env %q lacks CGO_ENABLED=0", b.env)
	}
	if !slices.Contains(b.args, "-trimpath") {
		t.Errorf("go build %q lacks -trimpath", b.args)
	}
	if i := slices.Index(b.args, "-ldflags"); i < 0 || i+1 == len(b.args) {
		t.Errorf("go build %q has no -ldflags", b.args)
	} else if ld := strings.Fields(b.args[i+1]); !slices.Contains(ld, "-s") || !slices.Contains(ld, "-w") || !slices.Contains(ld, "main.version="+buildArgs["VERSION"]) {
		t.Errorf("-ldflags %q: want -s -w -X main.version=${VERSION}", b.args[i+1])
	}
	if b.args[len(b.args)-1] != "./cmd/messd" {
		t.Errorf("go build %q does not build ./cmd/messd", b.args)
	}
}

// TestDockerfile_RuntimeStage checks the image messd runs in.
func TestDockerfile_RuntimeStage(t *testing.T) {
	df := parseDockerfile(t, "docker/Dockerfile")
	b := findGoBuild(t, df)
	rt := df.stages[len(df.stages)-1]
	if rt.from != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("runtime image %q, want gcr.io/distroless/static-debian12:nonroot", rt.from)
	}
	known := messdEnv(t)
	env := map[string]string{}
	var user, entrypoint, health string
	var volumes, exposed []string
	copies := map[string]string{} // destination -> instruction
	for _, in := range rt.insts {
		switch in.cmd {
		case "ENV":
			for _, kv := range envPairs(t, in) {
				env[kv[0]] = kv[1]
				if !known[kv[0]] {
					t.Errorf("ENV %s is not a variable messd reads", kv[0])
				}
			}
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "HEALTHCHECK":
			health = in.args
		case "VOLUME":
			var v []string
			if err := json.Unmarshal([]byte(in.args), &v); err != nil {
				v = strings.Fields(in.args)
			}
			volumes = append(volumes, v...)
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "COPY":
			f := strings.Fields(in.args)
			copies[f[len(f)-1]] = in.args
		case "RUN":
			t.Errorf("line %d: RUN in the runtime stage: it has no shell", in.line)
		}
	}
	for k, want := range map[string]string{"PORT": "3000", "STORAGE_TYPE": "filesystem", "STORAGE_PATH": "/data"} {
		if env[k] != want {
			t.Errorf("ENV %s=%q, want %q", k, env[k], want)
		}
	}
	if !slices.Contains(volumes, env["STORAGE_PATH"]) {
		t.Errorf("VOLUME %q does not hold STORAGE_PATH %q", volumes, env["STORAGE_PATH"])
	}
	if !slices.Contains(exposed, env["PORT"]) {
		t.Errorf("EXPOSE %q does not include PORT %q", exposed, env["PORT"])
	}
	if u, _, _ := strings.Cut(user, ":"); u != "65532" {
		t.Errorf("USER %q, want the numeric non-root 65532 (Kubernetes checks runAsNonRoot on numbers)", user)
	}
	// The binary copied from the builder, and the data directory owned by
	// the runtime user so a fresh volume mounted there is writable.
	if c := copies["/messd"]; !strings.Contains(c, "--from="+df.stages[0].name) || !strings.Contains(c, " "+b.output+" ") {
		t.Errorf("COPY to /messd is %q, want --from=%s %s /messd", c, df.stages[0].name, b.output)
	}
	if c := copies[env["STORAGE_PATH"]]; !strings.Contains(c, "--chown=65532:65532") {
		t.Errorf("COPY to %s is %q, want it owned by 65532:65532", env["STORAGE_PATH"], c)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || !slices.Equal(ep, []string{"/messd"}) {
		t.Errorf("ENTRYPOINT %s, want exec form [\"/messd\"]", entrypoint)
	}
	_, cmd, ok := strings.Cut(health, "CMD ")
	var hc []string
	if !ok || json.Unmarshal([]byte(cmd), &hc) != nil || !slices.Equal(hc, []string{"/messd", "healthcheck"}) {
		t.Errorf("HEALTHCHECK %q, want exec form CMD [\"/messd\", \"healthcheck\"]", health)
	}
	if strings.Contains(health, "--timeout=") && !strings.Contains(health, "--timeout=5s") {
		t.Errorf("HEALTHCHECK %q: keep the timeout above messd healthcheck's own 2 s", health)
	}
}

// buildLikeDockerfile runs the Dockerfile's go build with the same
// environment and flags, on the repository, into a temporary directory.
func buildLikeDockerfile(t *testing.T) string {
	t.Helper()
	b := findGoBuild(t, parseDockerfile(t, "docker/Dockerfile"))
	out := filepath.Join(t.TempDir(), "messd")
	args := slices.Clone(b.args)
	args[slices.Index(args, "-o")+1] = out
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = repoRoot(t) // WORKDIR /src after COPY . .
	// The golang image sets none of these; the build line decides them.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains([]string{"GOFLAGS", "CGO_ENABLED", "GOOS", "GOARCH", "GOAMD64", "GOARM64", "GOEXPERIMENT"}, k)
	})
	cmd.Env = append(cmd.Env, b.env...)
	if outb, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s (env %q): %v\n%s", cmd, b.env, err, outb)
	}
	return out
}

// TestImageBinary builds messd as the image does and runs it: static,
// stripped and trimmed, versioned, serving, and checking its own health.
func TestImageBinary(t *testing.T) {
	t.Parallel()
	bin := buildLikeDockerfile(t)

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("program header %v: the binary is dynamically linked; distroless/static has no libc", p.Type)
			}
		}
		if f.Section(".dynamic") != nil || f.Section(".interp") != nil {
			t.Error("the binary has a .dynamic or .interp section")
		}
		if f.Section(".symtab") != nil {
			t.Error("the binary has a symbol table: -ldflags -s did not apply")
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(repoRoot(t))) {
			t.Errorf("the binary contains the build directory %s: -trimpath did not apply", repoRoot(t))
		}
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" || settings["GOOS"] != "linux" {
			t.Errorf("build settings %v: want CGO_ENABLED=0, -trimpath=true, GOOS=linux", settings)
		}
	})

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil {
			t.Fatalf("messd version: %v\n%s", err, out)
		}
		line := strings.TrimSuffix(string(out), "\n")
		want := fmt.Sprintf("messd %s ", buildArgs["VERSION"])
		if !strings.HasPrefix(line, want) || strings.Contains(line, "\n") ||
			!strings.Contains(line, runtime.Version()) || !strings.HasSuffix(line, "linux/"+runtime.GOARCH) {
			t.Errorf("messd version printed %q, want one line %q... with %s linux/%s", out, want, runtime.Version(), runtime.GOARCH)
		}
	})

	t.Run("healthcheck", func(t *testing.T) {
		srv := startMessd(t, bin)
		live := []struct {
			name string
			env  []string
			args []string
		}{
			{"PORT", []string{"PORT=" + srv.port}, nil},
			{"ADDR wildcard host", []string{"ADDR=0.0.0.0:" + srv.port}, nil},
			{"ADDR empty host", []string{"ADDR=:" + srv.port}, nil},
			{"ADDR over PORT", []string{"ADDR=127.0.0.1:" + srv.port, "PORT=1"}, nil},
			{"-url", nil, []string{"-url", "http://127.0.0.1:" + srv.port + "/health"}},
		}
		for _, tc := range live {
			t.Run(tc.name, func(t *testing.T) {
				code, stdout, stderr := healthcheck(t, bin, tc.env, tc.args...)
				want := "healthy: http://127.0.0.1:" + srv.port + "/health\n"
				if code != 0 || stdout != want || stderr != "" {
					t.Errorf("exit %d, stdout %q, stderr %q; want 0 and %q", code, stdout, stderr, want)
				}
			})
		}

		srv.stop(t)
		code, stdout, stderr := healthcheck(t, bin, []string{"PORT=" + srv.port})
		if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "unhealthy: http://127.0.0.1:"+srv.port+"/health: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("after the server stopped: exit %d, stdout %q, stderr %q; want 1 and one line unhealthy: ...", code, stdout, stderr)
		}
	})

	t.Run("unhealthy answers", func(t *testing.T) {
		answers := []struct {
			name    string
			handler http.HandlerFunc
		}{
			{"503", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `{"status":"ok"}`)
			}},
			{"status not ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"status":"starting"}`) }},
			{"not JSON", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `ok`) }},
			{"redirect", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
			}},
			{"no answer in time", func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done() // the client gave up
			}},
		}
		for _, tc := range answers {
			t.Run(tc.name, func(t *testing.T) {
				ts := httptest.NewServer(tc.handler)
				t.Cleanup(ts.Close)
				code, stdout, stderr := healthcheck(t, bin, nil, "-url", ts.URL+"/health", "-timeout", "500ms")
				if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "unhealthy: "+ts.URL+"/health: ") {
					t.Errorf("exit %d, stdout %q, stderr %q; want 1 and unhealthy: ...", code, stdout, stderr)
				}
			})
		}
	})
}

// healthcheck runs "messd healthcheck" with only env set.
func healthcheck(t *testing.T, bin string, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"healthcheck"}, args...)...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("messd healthcheck: %v", err)
	}
	return code, o.String(), e.String()
}

type messdProcess struct {
	port    string
	cmd     *exec.Cmd
	exited  chan error // holds Wait's result once the process is gone
	log     string
	healthy bool
	stopped bool
}

// startMessd runs the binary as the image does (environment only, no
// flags) on a temporary directory and a free loopback port, and waits until
// it answers /health. A port taken between choosing and binding it makes
// messd exit; it then tries another.
func startMessd(t *testing.T, bin string) *messdProcess {
	t.Helper()
	dir := t.TempDir()
	for attempt := 0; attempt < 3; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		p := &messdProcess{port: port, exited: make(chan error, 1), log: filepath.Join(dir, fmt.Sprintf("messd-%d.log", attempt))}
		logf, err := os.Create(p.log)
		if err != nil {
			t.Fatal(err)
		}
		p.cmd = exec.Command(bin)
		p.cmd.Env = []string{
			"ADDR=127.0.0.1:" + port,
			"STORAGE_PATH=" + filepath.Join(dir, "data"),
			"CAPABILITIES_DIR=" + filepath.Join(dir, "capabilities"),
		}
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		go func() { p.exited <- p.cmd.Wait() }()
		t.Cleanup(func() { p.stop(t) })
		if p.waitHealthy(t) {
			return p
		}
	}
	t.Fatal("messd did not start in 3 attempts")
	return nil
}

// waitHealthy polls /health until it answers 200, or reports false when
// the process exited first.
func (p *messdProcess) waitHealthy(t *testing.T) bool {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			p.exited <- err
			logb, _ := os.ReadFile(p.log)
			t.Logf("messd exited before answering (%v):\n%s", err, logb)
			return false
		default:
		}
		resp, err := client.Get("http://127.0.0.1:" + p.port + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.healthy = true
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	logb, _ := os.ReadFile(p.log)
	t.Fatalf("messd did not answer /health within a minute:\n%s", logb)
	return false
}

// stop sends SIGTERM, as docker stop and Kubernetes do, and expects a clean
// exit; it is idempotent.
func (p *messdProcess) stop(t *testing.T) {
	t.Helper()
	if p.stopped {
		return
	}
	p.stopped = true
	var err error
	select {
	case err = <-p.exited:
		p.exited <- err
		if p.healthy {
			t.Errorf("messd exited on its own: %v", err)
		}
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err = <-p.exited:
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		err = <-p.exited
		t.Errorf("messd did not exit within a minute of SIGTERM")
	}
	p.exited <- err
	if err != nil {
		logb, _ := os.ReadFile(p.log)
		t.Errorf("messd exited with %v after SIGTERM, want 0:\n%s", err, logb)
	}
}
