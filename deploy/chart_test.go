package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// helmModule is the Helm the tests render the chart with, built from the Go
// module proxy by go run (the first time only; Go caches the build).
const helmModule = "helm.sh/helm/v3/cmd/helm@v3.22.0"

var helmBuilt sync.Once

// helm runs helm with args in a scratch home, and returns its stdout,
// stderr and whether it succeeded.
func helm(t *testing.T, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	helmBuilt.Do(func() {
		// One build before the parallel subtests, so they do not all
		// compile helm at once.
		if out, err := exec.Command("go", "run", helmModule, "version", "--short").CombinedOutput(); err != nil {
			t.Fatalf("go run %s version: %v\n%s", helmModule, err, out)
		}
	})
	home := t.TempDir()
	cmd := exec.Command("go", append([]string{"run", helmModule}, args...)...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		if _, isExit := err.(*exec.ExitError); !isExit {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	return o.String(), e.String(), err == nil
}

// valuesFile writes a values file for helm -f, in a directory whose name
// has no comma (helm splits -f on commas; t.TempDir holds the test name).
func valuesFile(t *testing.T, yaml string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "values")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// manifest is one rendering of the chart, every object decoded strictly
// into its Kubernetes API type.
type manifest struct {
	objects []runtime.Object
}

var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, networkingv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	// Strict: an unknown or duplicate field, or a field in the wrong case,
	// is an error, as "kubectl apply --validate=strict" makes it.
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Yaml: true, Strict: true})
}()

func decodeManifest(t *testing.T, out string) manifest {
	t.Helper()
	var m manifest
	for _, doc := range strings.Split(out, "\n---\n") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, gvk, err := decoder.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decoding %v: %v\n%s", gvk, err, doc)
		}
		m.objects = append(m.objects, obj)
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") && strings.TrimSpace(l) != "---" {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// objectsOf returns the manifest's objects of type T.
func objectsOf[T runtime.Object](m manifest) []T {
	var out []T
	for _, o := range m.objects {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// only returns the single object of type T, failing when there is not one.
func only[T runtime.Object](t *testing.T, m manifest) T {
	t.Helper()
	objs := objectsOf[T](m)
	if len(objs) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T, want 1", len(objs), zero)
	}
	return objs[0]
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	return env
}

// secret returns the Secret called name and its data, stringData included.
func secret(t *testing.T, m manifest, name string) map[string]string {
	t.Helper()
	for _, s := range objectsOf[*corev1.Secret](m) {
		if s.Name == name {
			data := map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
			for k, v := range s.StringData {
				data[k] = v
			}
			return data
		}
	}
	t.Fatalf("no Secret %q in the manifest", name)
	return nil
}

// TestChart renders the chart for its main value combinations, lints each,
// decodes every object strictly into the Kubernetes API types and checks
// what each combination must produce.
func TestChart(t *testing.T) {
	t.Parallel()
	known := messdEnv(t)
	cases := []struct {
		name   string
		values string
		// replicas is the Deployment's; zero means 1.
		replicas int32
		set      []string // --set arguments
		check    func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container)
	}{
		{
			name:   "install command of the README",
			values: "{}",
			set:    []string{"image.repository=your-registry/mess-exchange", "ingress.enabled=true", "ingress.hosts[0].host=mess.yourdomain.com"},
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				if c.Image != "your-registry/mess-exchange:latest" {
					t.Errorf("image %q, want the pushed your-registry/mess-exchange:latest", c.Image)
				}
				ing := only[*networkingv1.Ingress](t, m)
				if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != "mess.yourdomain.com" || ing.Spec.Rules[0].HTTP == nil ||
					len(ing.Spec.Rules[0].HTTP.Paths) != 1 || ing.Spec.Rules[0].HTTP.Paths[0].Path != "/" {
					t.Errorf("rules %+v, want mess.yourdomain.com with path / (--set replaced the default hosts list)", ing.Spec.Rules)
				}
				only[*corev1.PersistentVolumeClaim](t, m)
			},
		},
		{
			name:   "filesystem default",
			values: "{}",
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				pvc := only[*corev1.PersistentVolumeClaim](t, m)
				if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) ||
					!pvc.Spec.Resources.Requests.Storage().Equal(resource.MustParse("10Gi")) {
					t.Errorf("claim %s: access %v, size %v; want ReadWriteOnce 10Gi", pvc.Name, pvc.Spec.AccessModes, pvc.Spec.Resources.Requests.Storage())
				}
				if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
					t.Errorf("claim annotations %v: the data must outlive helm uninstall", pvc.Annotations)
				}
				checkFilesystem(t, d, c, pvc.Name)
				if len(objectsOf[*corev1.Secret](m)) != 0 || len(c.EnvFrom) != 0 {
					t.Errorf("no secret values set, yet the chart made %d Secrets and envFrom %v", len(objectsOf[*corev1.Secret](m)), c.EnvFrom)
				}
				if len(objectsOf[*networkingv1.Ingress](m)) != 0 {
					t.Error("Ingress rendered while disabled")
				}
				if c.Resources.Limits != nil || c.Resources.Requests != nil {
					t.Errorf("resources %v, want none by default", c.Resources)
				}
				pdb := only[*policyv1.PodDisruptionBudget](t, m)
				if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || pdb.Spec.MinAvailable != nil {
					t.Errorf("PDB %+v, want maxUnavailable 1 so a drain can evict the only replica", pdb.Spec)
				}
			},
		},
		{
			name: "filesystem existing claim, resources, readinessPath",
			values: `
storage:
  filesystem:
    path: /var/lib/messd
    persistence: {existingClaim: my-claim}
resources:
  requests: {cpu: 250m, memory: 256Mi}
  limits: {memory: 1Gi}
readinessPath: /ready
podDisruptionBudget: {minAvailable: 1}
`,
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				if n := len(objectsOf[*corev1.PersistentVolumeClaim](m)); n != 0 {
					t.Errorf("%d claims rendered with existingClaim set", n)
				}
				checkFilesystem(t, d, c, "my-claim")
				if got := envOf(c)["STORAGE_PATH"].Value; got != "/var/lib/messd" {
					t.Errorf("STORAGE_PATH %q", got)
				}
				want := corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
				}
				for _, l := range []struct{ got, want corev1.ResourceList }{{c.Resources.Requests, want.Requests}, {c.Resources.Limits, want.Limits}} {
					if len(l.got) != len(l.want) {
						t.Errorf("resources %v, want %v", c.Resources, want)
					}
					for k, q := range l.want {
						if g := l.got[k]; !g.Equal(q) {
							t.Errorf("resource %s = %v, want %v", k, g.String(), q.String())
						}
					}
				}
				if p := c.ReadinessProbe.HTTPGet.Path; p != "/ready" {
					t.Errorf("readiness path %q, want /ready", p)
				}
				if p := c.LivenessProbe.HTTPGet.Path; p != "/health" {
					t.Errorf("liveness path %q, want /health whatever readinessPath is", p)
				}
				pdb := only[*policyv1.PodDisruptionBudget](t, m)
				if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != intstr.FromInt32(1) || pdb.Spec.MaxUnavailable != nil {
					t.Errorf("PDB %+v, want minAvailable 1 alone", pdb.Spec)
				}
			},
		},
		{
			name: "s3 existing secrets",
			values: `
storage:
  type: s3
  s3:
    endpoint: minio.storage:9000
    bucket: mess
    region: us-east-1
    prefix: prod/
    useSSL: false
    existingSecret: s3-creds
    accessKeyKey: access
    secretKeyKey: secret
existingSecret: messd-env
registrationToken: ignored-when-existingSecret-is-set
`,
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				checkS3(t, m, d, c, "s3-creds", "access", "secret")
				env := envOf(c)
				for k, want := range map[string]string{"S3_ENDPOINT": "minio.storage:9000", "S3_BUCKET": "mess", "S3_REGION": "us-east-1", "S3_PREFIX": "prod/", "S3_USE_SSL": "false"} {
					if env[k].Value != want {
						t.Errorf("%s = %q, want %q", k, env[k].Value, want)
					}
				}
				if n := len(objectsOf[*corev1.Secret](m)); n != 0 {
					t.Errorf("%d Secrets rendered though both are existing ones", n)
				}
				checkEnvFrom(t, c, "messd-env")
			},
		},
		{
			name:     "s3 chart secrets",
			replicas: 3,
			values: `
storage:
  type: s3
  s3:
    endpoint: s3.amazonaws.com
    bucket: mess
    accessKey: AKIAEXAMPLE
    secretKey: not-a-real-secret
    standbys: 2
registrationToken: reg-token-123
secretEnv:
  NOTIFY_SIGNING_SECRET: sign-456
`,
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				name := d.Name + "-s3"
				checkS3(t, m, d, c, name, "S3_ACCESS_KEY", "S3_SECRET_KEY")
				if got := secret(t, m, name); got["S3_ACCESS_KEY"] != "AKIAEXAMPLE" || got["S3_SECRET_KEY"] != "not-a-real-secret" || len(got) != 2 {
					t.Errorf("S3 Secret %v", got)
				}
				env := envOf(c)
				if env["S3_USE_SSL"].Value != "true" {
					t.Errorf("S3_USE_SSL %q, want true by default", env["S3_USE_SSL"].Value)
				}
				for _, k := range []string{"S3_REGION", "S3_PREFIX"} {
					if _, set := env[k]; set {
						t.Errorf("%s set though empty", k)
					}
				}
				checkEnvFrom(t, c, d.Name+"-env")
				if got := secret(t, m, d.Name+"-env"); got["MESS_REGISTRATION_TOKEN"] != "reg-token-123" || got["NOTIFY_SIGNING_SECRET"] != "sign-456" || len(got) != 2 {
					t.Errorf("env Secret %v", got)
				}
				for _, e := range c.Env {
					if slices.Contains([]string{"AKIAEXAMPLE", "not-a-real-secret", "reg-token-123", "sign-456"}, e.Value) {
						t.Errorf("secret value in plain env %s", e.Name)
					}
				}
			},
		},
		{
			name: "ingress",
			values: `
ingress:
  enabled: true
  className: nginx-internal
  annotations:
    cert-manager.io/cluster-issuer: letsencrypt
    nginx.ingress.kubernetes.io/proxy-body-size: 64m
  hosts:
    - host: mess.yourdomain.com
      paths: [{path: /, pathType: Prefix}]
  tls:
    - hosts: [mess.yourdomain.com]
      secretName: mess-tls
config:
  publicURL: https://mess.yourdomain.com
  openExchanges: [home, lab]
  maxBodyBytes: 20971520
extraEnv:
  - {name: MAILBUS_PING_INTERVAL, value: 20s}
`,
			check: func(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container) {
				ing := only[*networkingv1.Ingress](t, m)
				svc := only[*corev1.Service](t, m)
				if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx-internal" {
					t.Errorf("ingressClassName %v", ing.Spec.IngressClassName)
				}
				for k, want := range map[string]string{
					"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
					"nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
					"nginx.ingress.kubernetes.io/proxy-buffering":    "off",
					"nginx.ingress.kubernetes.io/proxy-body-size":    "64m", // the user's value wins
					"cert-manager.io/cluster-issuer":                 "letsencrypt",
				} {
					if got := ing.Annotations[k]; got != want {
						t.Errorf("annotation %s = %q, want %q", k, got, want)
					}
				}
				if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != "mess.yourdomain.com" {
					t.Fatalf("rules %+v", ing.Spec.Rules)
				}
				paths := ing.Spec.Rules[0].HTTP.Paths
				if len(paths) != 1 || paths[0].Backend.Service == nil || paths[0].Backend.Service.Name != svc.Name ||
					paths[0].Backend.Service.Port.Name != svc.Spec.Ports[0].Name || paths[0].PathType == nil || *paths[0].PathType != networkingv1.PathTypePrefix {
					t.Errorf("paths %+v do not lead to Service %s port %s", paths, svc.Name, svc.Spec.Ports[0].Name)
				}
				if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "mess-tls" || !slices.Equal(ing.Spec.TLS[0].Hosts, []string{"mess.yourdomain.com"}) {
					t.Errorf("tls %+v", ing.Spec.TLS)
				}
				env := envOf(c)
				if env["NOTIFY_PUBLIC_URL"].Value != "https://mess.yourdomain.com" || env["MESS_OPEN_EXCHANGES"].Value != "home,lab" ||
					env["MAILBUS_PING_INTERVAL"].Value != "20s" || env["MAX_BODY_BYTES"].Value != "20971520" {
					t.Errorf("env %v", c.Env)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"helm", "-f", valuesFile(t, tc.values)}
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			if out, errOut, ok := helm(t, append([]string{"lint", "--strict"}, args...)...); !ok {
				t.Errorf("helm lint --strict: %s%s", out, errOut)
			}
			out, errOut, ok := helm(t, append([]string{"template", "mess-exchange", "--namespace", "mess"}, args...)...)
			if !ok {
				t.Fatalf("helm template: %s", errOut)
			}
			m := decodeManifest(t, out)
			d := only[*appsv1.Deployment](t, m)
			if len(d.Spec.Template.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(d.Spec.Template.Spec.Containers))
			}
			c := d.Spec.Template.Spec.Containers[0]
			replicas := tc.replicas
			if replicas == 0 {
				replicas = 1
			}
			checkCommon(t, m, d, c, known, replicas)
			tc.check(t, m, d, c)
		})
	}
}

// checkCommon checks what every rendering must have: one writer, a
// restricted pod, probes on the http port, and objects that point at each
// other.
func checkCommon(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container, known map[string]bool, replicas int32) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("replicas %v, want %d: one writer, plus the standbys on S3", d.Spec.Replicas, replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q, want Recreate so two never overlap", d.Spec.Strategy.Type)
	}
	pod := d.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.FSGroup == nil || *psc.FSGroup != 65532 || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v, want non-root 65532, fsGroup 65532, seccomp RuntimeDefault", psc)
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext %+v, want the restricted profile", sc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token; messd never calls the API")
	}
	sa := only[*corev1.ServiceAccount](t, m)
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, the chart's ServiceAccount is %q", pod.ServiceAccountName, sa.Name)
	}
	// A read-only root needs a writable /tmp.
	if !hasMount(c, "/tmp") {
		t.Errorf("no volume at /tmp: %+v", c.VolumeMounts)
	}

	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 3000 || c.Ports[0].Name != "http" {
		t.Errorf("ports %+v, want http 3000", c.Ports)
	}
	env := envOf(c)
	if env["PORT"].Value != "3000" {
		t.Errorf("PORT %q, want the container port 3000", env["PORT"].Value)
	}
	for name := range env {
		if !known[name] {
			t.Errorf("env %s is not a variable messd reads", name)
		}
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
	}{{"liveness", c.LivenessProbe}, {"readiness", c.ReadinessProbe}, {"startup", c.StartupProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Port != intstr.FromString("http") || !strings.HasPrefix(p.probe.HTTPGet.Path, "/") {
			t.Errorf("%s probe %+v, want an HTTP GET on port http", p.name, p.probe)
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/health" {
		t.Errorf("liveness path %q, want /health", c.LivenessProbe.HTTPGet.Path)
	}

	podLabels := labels.Set(d.Spec.Template.Labels)
	if sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels); !sel.Matches(podLabels) {
		t.Errorf("Deployment selector %v does not match its pods %v", d.Spec.Selector.MatchLabels, podLabels)
	}
	svc := only[*corev1.Service](t, m)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not match the pods %v", svc.Spec.Selector, podLabels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != intstr.FromString("http") {
		t.Errorf("Service ports %+v, want one to target port http", svc.Spec.Ports)
	}
	if pdbs := objectsOf[*policyv1.PodDisruptionBudget](m); len(pdbs) != 1 || pdbs[0].Spec.Selector == nil || !labels.SelectorFromSet(pdbs[0].Spec.Selector.MatchLabels).Matches(podLabels) {
		t.Errorf("want one PodDisruptionBudget selecting the pods, got %v", pdbs)
	}

	for _, ing := range objectsOf[*networkingv1.Ingress](m) {
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil || len(r.HTTP.Paths) == 0 {
				t.Errorf("Ingress rule for %q has no paths; the API server refuses it", r.Host)
			}
		}
	}

	// "helm test" runs the image's healthcheck against the Service.
	var tests []*corev1.Pod
	for _, p := range objectsOf[*corev1.Pod](m) {
		if p.Annotations["helm.sh/hook"] == "test" {
			tests = append(tests, p)
		}
	}
	if len(tests) != 1 {
		t.Fatalf("%d helm test pods, want 1", len(tests))
	}
	tc := tests[0].Spec.Containers[0]
	wantURL := "http://" + svc.Name + ":" + strconv.Itoa(int(svc.Spec.Ports[0].Port)) + "/health"
	if tc.Image != c.Image || len(tc.Args) < 3 || tc.Args[0] != "healthcheck" || tc.Args[1] != "-url" || tc.Args[2] != wantURL {
		t.Errorf("helm test container %s %q, want %s healthcheck -url %s", tc.Image, tc.Args, c.Image, wantURL)
	}
}

func hasMount(c corev1.Container, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool { return v.MountPath == path })
}

// checkFilesystem checks a filesystem-mode pod: the claim mounted at
// STORAGE_PATH and no S3 settings.
func checkFilesystem(t *testing.T, d *appsv1.Deployment, c corev1.Container, claim string) {
	t.Helper()
	env := envOf(c)
	if env["STORAGE_TYPE"].Value != "filesystem" {
		t.Errorf("STORAGE_TYPE %q", env["STORAGE_TYPE"].Value)
	}
	var volume string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			volume = v.Name
		}
	}
	if volume == "" {
		t.Fatalf("no volume of claim %q in %+v", claim, d.Spec.Template.Spec.Volumes)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == volume && m.MountPath == env["STORAGE_PATH"].Value && !m.ReadOnly
	}) {
		t.Errorf("claim volume %q not mounted writable at STORAGE_PATH %q: %+v", volume, env["STORAGE_PATH"].Value, c.VolumeMounts)
	}
	for name := range env {
		if strings.HasPrefix(name, "S3_") {
			t.Errorf("%s set in filesystem mode", name)
		}
	}
}

// checkS3 checks an S3-mode pod: no claim, the S3 settings, and the
// credentials by reference to the Secret.
func checkS3(t *testing.T, m manifest, d *appsv1.Deployment, c corev1.Container, secretName, accessKey, secretKey string) {
	t.Helper()
	if n := len(objectsOf[*corev1.PersistentVolumeClaim](m)); n != 0 {
		t.Errorf("%d claims in s3 mode", n)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("volume %s uses a claim in s3 mode", v.Name)
		}
	}
	env := envOf(c)
	if env["STORAGE_TYPE"].Value != "s3" || env["S3_BUCKET"].Value == "" {
		t.Errorf("STORAGE_TYPE %q S3_BUCKET %q", env["STORAGE_TYPE"].Value, env["S3_BUCKET"].Value)
	}
	if _, set := env["STORAGE_PATH"]; set {
		t.Error("STORAGE_PATH set in s3 mode")
	}
	if v := env["S3_USE_SSL"].Value; v != "true" && v != "false" {
		t.Errorf("S3_USE_SSL %q, want true or false", v)
	}
	for name, key := range map[string]string{"S3_ACCESS_KEY": accessKey, "S3_SECRET_KEY": secretKey} {
		e := env[name]
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
			e.ValueFrom.SecretKeyRef.Name != secretName || e.ValueFrom.SecretKeyRef.Key != key {
			t.Errorf("%s = %+v, want a reference to key %s of Secret %s", name, e, key, secretName)
		}
	}
}

// checkEnvFrom checks that the container loads the Secret called name.
func checkEnvFrom(t *testing.T, c corev1.Container, name string) {
	t.Helper()
	if !slices.ContainsFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
		return e.SecretRef != nil && e.SecretRef.Name == name
	}) {
		t.Errorf("envFrom %+v does not load Secret %s", c.EnvFrom, name)
	}
	if _, set := envOf(c)["MESS_REGISTRATION_TOKEN"]; set {
		t.Error("MESS_REGISTRATION_TOKEN in plain env; it belongs in the Secret")
	}
}

// TestChart_Refuses checks that settings messd cannot run with fail the
// render with a message that names the value.
func TestChart_Refuses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, values, want string
	}{
		{"unknown storage type", "storage: {type: nfs}", "storage/type"},
		{"s3 without bucket", "storage: {type: s3, s3: {accessKey: a, secretKey: b}}", "storage.s3.bucket is required"},
		{"s3 without credentials", "storage: {type: s3, s3: {bucket: b}}", "storage.s3.existingSecret"},
		{"misspelt value", "ingres: {enabled: true}", "ingres"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, errOut, ok := helm(t, "template", "mess-exchange", "helm", "-f", valuesFile(t, tc.values))
			if ok || !strings.Contains(errOut, tc.want) {
				t.Errorf("helm template succeeded=%v, stderr %q; want a failure naming %q", ok, errOut, tc.want)
			}
		})
	}
}

// TestChart_ValuesDocumented checks that deploy/helm/README.md has a row for
// every value (or for a map of them as a whole), and no row for a value
// that does not exist.
func TestChart_ValuesDocumented(t *testing.T) {
	data, err := os.ReadFile("helm/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(data, &values); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("helm/README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Za-z0-9.]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		rows[m[1]] = true
	}
	seen := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		seen[prefix] = true
		if rows[prefix] {
			return
		}
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			for k, sub := range m {
				walk(strings.TrimPrefix(prefix+"."+k, "."), sub)
			}
			return
		}
		t.Errorf("value %s has no row in deploy/helm/README.md", prefix)
	}
	for k, v := range values {
		walk(k, v)
	}
	for r := range rows {
		if !seen[r] {
			t.Errorf("deploy/helm/README.md documents %s, which values.yaml does not have", r)
		}
	}
}
