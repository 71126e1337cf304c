package deploy_test

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// composeFile is the part of the Compose specification the file uses; a
// key outside it fails the strict decode, so a misspelt key cannot pass.
type composeFile struct {
	Name     string                     `json:"name"`
	Services map[string]composeService  `json:"services"`
	Volumes  map[string]*map[string]any `json:"volumes"`
}

type composeService struct {
	Image           string                      `json:"image"`
	Build           *composeBuild               `json:"build"`
	Profiles        []string                    `json:"profiles"`
	Command         json.RawMessage             `json:"command"`
	Entrypoint      json.RawMessage             `json:"entrypoint"`
	Environment     map[string]string           `json:"environment"`
	Ports           []string                    `json:"ports"`
	Volumes         []string                    `json:"volumes"`
	Tmpfs           []string                    `json:"tmpfs"`
	DependsOn       map[string]composeDependsOn `json:"depends_on"`
	Healthcheck     *composeHealthcheck         `json:"healthcheck"`
	Restart         string                      `json:"restart"`
	ReadOnly        bool                        `json:"read_only"`
	CapDrop         []string                    `json:"cap_drop"`
	SecurityOpt     []string                    `json:"security_opt"`
	StopGracePeriod string                      `json:"stop_grace_period"`
}

type composeBuild struct {
	Context    string            `json:"context"`
	Dockerfile string            `json:"dockerfile"`
	Args       map[string]string `json:"args"`
}

type composeDependsOn struct {
	Condition string `json:"condition"`
}

type composeHealthcheck struct {
	Test        []string `json:"test"`
	Interval    string   `json:"interval"`
	Timeout     string   `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod string   `json:"start_period"`
}

// loadCompose decodes the Compose file strictly, after dropping the x-
// extension fields that exist only to be merged into services.
func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile("docker/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := yaml.UnmarshalStrict(data, &top); err != nil {
		t.Fatal(err)
	}
	for k := range top {
		if strings.HasPrefix(k, "x-") {
			delete(top, k)
		}
	}
	rest, err := json.Marshal(top)
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.UnmarshalStrict(rest, &f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return f
}

var interpolation = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_]|\{)`)

// interpolate resolves ${VAR:-default} and ${VAR-default} as Compose does
// with VAR unset, and $$ to $; it records the variables referenced.
func interpolate(t *testing.T, s string, refs map[string]bool) string {
	t.Helper()
	return interpolation.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := interpolation.FindStringSubmatch(m)
		if sub[1] == "" {
			t.Fatalf("%q: use ${VAR:-default} so the default is visible", s)
		}
		refs[sub[1]] = true
		return sub[3]
	})
}

// TestCompose checks the services, profiles, volumes, healthchecks and
// environment of docker-compose.yml, with every variable at its default.
func TestCompose(t *testing.T) {
	t.Parallel()
	f := loadCompose(t)
	known := messdEnv(t)
	refs := map[string]bool{}
	env := map[string]map[string]string{} // interpolated, per service
	for name, s := range f.Services {
		env[name] = map[string]string{}
		for k, v := range s.Environment {
			env[name][k] = interpolate(t, v, refs)
		}
		for i, p := range s.Ports {
			s.Ports[i] = interpolate(t, p, refs)
		}
		s.Image = interpolate(t, s.Image, refs)
		f.Services[name] = s
	}

	if got, want := slices.Sorted(maps.Keys(f.Services)), []string{"mess-exchange", "mess-exchange-s3", "minio", "minio-init"}; !slices.Equal(got, want) {
		t.Fatalf("services %q, want %q", got, want)
	}
	fs, s3, minio, initc := f.Services["mess-exchange"], f.Services["mess-exchange-s3"], f.Services["minio"], f.Services["minio-init"]

	t.Run("commands", func(t *testing.T) {
		// "up -d mess-exchange" starts it and its dependencies;
		// "--profile minio up -d" starts the services without a profile and
		// those of the profile. Each must start everything it depends on.
		if got := startedBy(t, f, nil, []string{"mess-exchange"}); !slices.Equal(got, []string{"mess-exchange"}) {
			t.Errorf("up -d mess-exchange starts %q, want only mess-exchange", got)
		}
		if got := startedBy(t, f, []string{"minio"}, nil); !slices.Equal(got, []string{"mess-exchange", "mess-exchange-s3", "minio", "minio-init"}) {
			t.Errorf("--profile minio up -d starts %q", got)
		}
		if got := startedBy(t, f, nil, nil); !slices.Equal(got, []string{"mess-exchange"}) {
			t.Errorf("up -d starts %q, want mess-exchange", got)
		}
	})

	t.Run("messd services", func(t *testing.T) {
		hostPorts := map[string]string{}
		for _, name := range []string{"mess-exchange", "mess-exchange-s3"} {
			s := f.Services[name]
			if s.Build == nil || filepath.Join("docker", s.Build.Context) != ".." || s.Build.Dockerfile != "deploy/docker/Dockerfile" {
				t.Errorf("%s build %+v, want context ../.. and dockerfile deploy/docker/Dockerfile", name, s.Build)
			} else if _, err := os.Stat(filepath.Join("docker", s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if s.Healthcheck == nil || !slices.Equal(s.Healthcheck.Test, []string{"CMD", "/messd", "healthcheck"}) {
				t.Errorf("%s healthcheck %+v, want CMD /messd healthcheck", name, s.Healthcheck)
			}
			if !s.ReadOnly || !slices.Contains(s.Tmpfs, "/tmp") || !slices.Equal(s.CapDrop, []string{"ALL"}) {
				t.Errorf("%s: read_only %v, tmpfs %q, cap_drop %q; want a read-only root with /tmp and no capabilities", name, s.ReadOnly, s.Tmpfs, s.CapDrop)
			}
			if env[name]["PORT"] != "3000" {
				t.Errorf("%s PORT %q, want the image's 3000", name, env[name]["PORT"])
			}
			if len(s.Ports) != 1 || !strings.HasSuffix(s.Ports[0], ":3000") {
				t.Fatalf("%s ports %q, want one mapping to 3000", name, s.Ports)
			}
			hostPorts[name] = strings.TrimSuffix(s.Ports[0], ":3000")
			for k := range s.Environment {
				if !known[k] {
					t.Errorf("%s: %s is not a variable messd reads", name, k)
				}
			}
		}
		if hostPorts["mess-exchange"] == hostPorts["mess-exchange-s3"] {
			t.Errorf("both messd services publish host port %s; the minio profile runs both", hostPorts["mess-exchange"])
		}
	})

	t.Run("filesystem", func(t *testing.T) {
		if len(fs.Profiles) != 0 {
			t.Errorf("mess-exchange profiles %q: it must start without one", fs.Profiles)
		}
		if len(fs.DependsOn) != 0 {
			t.Errorf("mess-exchange depends on %v", fs.DependsOn)
		}
		if env["mess-exchange"]["STORAGE_TYPE"] != "filesystem" || env["mess-exchange"]["STORAGE_PATH"] != "/data" {
			t.Errorf("mess-exchange env %v", env["mess-exchange"])
		}
		if !slices.Contains(fs.Volumes, "mess-data:/data") || f.Volumes == nil {
			t.Errorf("mess-exchange volumes %q, want the named volume mess-data at /data", fs.Volumes)
		}
		if _, ok := f.Volumes["mess-data"]; !ok {
			t.Error("volume mess-data not declared")
		}
	})

	t.Run("minio", func(t *testing.T) {
		pinned := regexp.MustCompile(`^quay\.io/minio/(minio|mc):RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$`)
		for name, s := range map[string]composeService{"minio": minio, "minio-init": initc} {
			if !slices.Equal(s.Profiles, []string{"minio"}) {
				t.Errorf("%s profiles %q, want [minio]", name, s.Profiles)
			}
			if !pinned.MatchString(s.Image) {
				t.Errorf("%s image %q, want a pinned MinIO release", name, s.Image)
			}
		}
		if minio.Healthcheck == nil || len(minio.Healthcheck.Test) < 2 || minio.Healthcheck.Test[0] != "CMD" {
			t.Errorf("minio healthcheck %+v, want an exec-form test", minio.Healthcheck)
		}
		if !slices.Contains(minio.Volumes, "minio-data:/data") {
			t.Errorf("minio volumes %q", minio.Volumes)
		}
		if _, ok := f.Volumes["minio-data"]; !ok {
			t.Error("volume minio-data not declared")
		}
		if initc.DependsOn["minio"].Condition != "service_healthy" || initc.Restart != "no" {
			t.Errorf("minio-init depends_on %v restart %q, want minio healthy and no restart", initc.DependsOn, initc.Restart)
		}
		var cmd []string
		if err := json.Unmarshal(initc.Command, &cmd); err != nil || len(cmd) != 1 {
			t.Fatalf("minio-init command %s, want one shell line", initc.Command)
		}
		line := interpolate(t, cmd[0], refs)
		if !strings.Contains(line, `mc mb --ignore-existing "local/$S3_BUCKET"`) || !strings.Contains(line, "http://minio:9000") {
			t.Errorf("minio-init runs %q, want it to create $S3_BUCKET on http://minio:9000 (idempotently)", line)
		}
	})

	t.Run("s3", func(t *testing.T) {
		if !slices.Equal(s3.Profiles, []string{"minio"}) {
			t.Errorf("mess-exchange-s3 profiles %q, want [minio]", s3.Profiles)
		}
		if s3.DependsOn["minio-init"].Condition != "service_completed_successfully" || s3.DependsOn["minio"].Condition != "service_healthy" {
			t.Errorf("mess-exchange-s3 depends_on %v, want minio healthy and minio-init completed", s3.DependsOn)
		}
		e := env["mess-exchange-s3"]
		var got []string
		for k := range e {
			if strings.HasPrefix(k, "S3_") {
				got = append(got, k)
			}
		}
		if slices.Sort(got); !slices.Equal(got, slices.Sorted(slices.Values(s3Env))) {
			t.Errorf("S3 settings %q, want exactly %q", got, slices.Sorted(slices.Values(s3Env)))
		}
		if e["STORAGE_TYPE"] != "s3" || e["S3_ENDPOINT"] != "minio:9000" || e["S3_USE_SSL"] != "false" {
			t.Errorf("STORAGE_TYPE %q S3_ENDPOINT %q S3_USE_SSL %q, want s3, minio:9000, false", e["STORAGE_TYPE"], e["S3_ENDPOINT"], e["S3_USE_SSL"])
		}
		if e["S3_BUCKET"] == "" || e["S3_BUCKET"] != env["minio-init"]["S3_BUCKET"] {
			t.Errorf("messd uses bucket %q, minio-init creates %q", e["S3_BUCKET"], env["minio-init"]["S3_BUCKET"])
		}
		m := env["minio"]
		if e["S3_ACCESS_KEY"] != m["MINIO_ROOT_USER"] || e["S3_SECRET_KEY"] != m["MINIO_ROOT_PASSWORD"] ||
			env["minio-init"]["MINIO_ROOT_USER"] != m["MINIO_ROOT_USER"] || env["minio-init"]["MINIO_ROOT_PASSWORD"] != m["MINIO_ROOT_PASSWORD"] {
			t.Errorf("credentials differ: messd %q/%q, minio %q/%q", e["S3_ACCESS_KEY"], e["S3_SECRET_KEY"], m["MINIO_ROOT_USER"], m["MINIO_ROOT_PASSWORD"])
		}
		if len(m["MINIO_ROOT_PASSWORD"]) < 8 {
			t.Errorf("MinIO refuses a root password under 8 characters: %q", m["MINIO_ROOT_PASSWORD"])
		}
	})

	t.Run("secrets are placeholders", func(t *testing.T) {
		// A default for a secret is empty or says to change it.
		secretish := regexp.MustCompile(`PASSWORD|SECRET|TOKEN`)
		for name, e := range env {
			for k, v := range e {
				if secretish.MatchString(k) && v != "" && !strings.Contains(v, "CHANGE-ME") {
					t.Errorf("%s: %s defaults to %q, which is not an obvious placeholder", name, k, v)
				}
			}
		}
	})

	t.Run("env example", func(t *testing.T) {
		// Every variable the file reads is documented in .env.example.
		data, err := os.ReadFile("docker/.env.example")
		if err != nil {
			t.Fatal(err)
		}
		listed := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)=`).FindAllStringSubmatch(string(data), -1) {
			listed[m[1]] = true
		}
		raw, err := os.ReadFile("docker/docker-compose.yml")
		if err != nil {
			t.Fatal(err)
		}
		interpolate(t, string(raw), refs)
		for v := range refs {
			if !listed[v] {
				t.Errorf("${%s} is not in .env.example", v)
			}
		}
	})
}

// startedBy is the set of services "docker compose [--profile p] up
// [service...]" starts: the named services (whatever their profiles) or
// else those without a profile or with an active one, plus what they
// depend on, which must itself be enabled.
func startedBy(t *testing.T, f composeFile, profiles, named []string) []string {
	t.Helper()
	enabled := func(s composeService) bool {
		return len(s.Profiles) == 0 || slices.ContainsFunc(s.Profiles, func(p string) bool { return slices.Contains(profiles, p) })
	}
	want := slices.Clone(named)
	if len(want) == 0 {
		for name, s := range f.Services {
			if enabled(s) {
				want = append(want, name)
			}
		}
	}
	started := map[string]bool{}
	for len(want) > 0 {
		name := want[0]
		want = want[1:]
		if started[name] {
			continue
		}
		s, ok := f.Services[name]
		if !ok {
			t.Fatalf("no service %q", name)
		}
		started[name] = true
		for dep := range s.DependsOn {
			if !enabled(f.Services[dep]) && !slices.Contains(named, dep) {
				t.Errorf("%s depends on %s, which its profiles do not enable", name, dep)
			}
			want = append(want, dep)
		}
	}
	return slices.Sorted(maps.Keys(started))
}
