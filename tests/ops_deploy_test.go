package tests

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard-project/switchyard/internal/config"
)

// The parts of Kubernetes objects the checks read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	HostNetwork bool `yaml:"hostNetwork"`
	Containers  []struct {
		Name            string   `yaml:"name"`
		Image           string   `yaml:"image"`
		Command         []string `yaml:"command"`
		SecurityContext struct {
			Privileged   *bool `yaml:"privileged"`
			Capabilities struct {
				Add  []string `yaml:"add"`
				Drop []string `yaml:"drop"`
			} `yaml:"capabilities"`
		} `yaml:"securityContext"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	} `yaml:"containers"`
	Volumes []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
		} `yaml:"hostPath"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

// readmeSection returns the README's section under heading (up to the
// next heading of the same or a higher level).
func readmeSection(t *testing.T, readme, heading string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no section %q", heading)
	}
	level := strings.Index(heading, " ")
	var out []string
	for line := range strings.SplitSeq(readme[i+len(heading)+2:], "\n") {
		if n := len(line) - len(strings.TrimLeft(line, "#")); n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
			break
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

var capRE = regexp.MustCompile(`CAP_[A-Z_]+`)

// The DaemonSet manifest is valid YAML of a ConfigMap and a DaemonSet, runs
// in the host namespace with the capabilities README lists for switchyardd
// (and the systemd units grant), mounts only host paths README documents,
// and its ConfigMap holds a config that switchyardd accepts at the path it
// is given.
func TestDeployManifest(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../deploy/switchyard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)

	var objs []k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(false)
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("deploy/switchyard.yaml: %v", err)
		}
		objs = append(objs, o)
	}
	var kinds []string
	var cm, ds *k8sObject
	for i, o := range objs {
		kinds = append(kinds, o.APIVersion+" "+o.Kind)
		switch o.Kind {
		case "ConfigMap":
			cm = &objs[i]
		case "DaemonSet":
			ds = &objs[i]
		}
	}
	if want := []string{"v1 ConfigMap", "apps/v1 DaemonSet"}; !slices.Equal(kinds, want) {
		t.Fatalf("objects %q, want %q", kinds, want)
	}
	for _, o := range objs {
		if o.Metadata.Name == "" || o.Metadata.Namespace == "" {
			t.Errorf("%s has no name or namespace", o.Kind)
		}
	}

	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("the DaemonSet's pods must use the host network (switchyardd serves the namespace it runs in)")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Metadata.Labels)
		}
	}
	if len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Error("the DaemonSet has no selector")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Command) == 0 || filepath.Base(c.Command[0]) != "switchyardd" {
		t.Fatalf("container command %q does not run switchyardd", c.Command)
	}

	// Capabilities: exactly those README names for switchyardd, which are
	// those the systemd unit grants.
	capSec := readmeSection(t, readme, "### Capabilities")
	needs, _, _ := strings.Cut(capSec, "The units grant exactly these")
	readmeCaps := capRE.FindAllString(needs, -1)
	slices.Sort(readmeCaps)
	readmeCaps = slices.Compact(readmeCaps)
	if len(readmeCaps) == 0 {
		t.Fatal("README's Capabilities section names no capability before 'The units grant exactly these'")
	}
	var added []string
	for _, a := range c.SecurityContext.Capabilities.Add {
		added = append(added, "CAP_"+a)
	}
	slices.Sort(added)
	if !slices.Equal(added, readmeCaps) {
		t.Errorf("the DaemonSet adds %q; README lists %q", added, readmeCaps)
	}
	if !slices.Equal(c.SecurityContext.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("capabilities.drop = %q, want [ALL]", c.SecurityContext.Capabilities.Drop)
	}
	if p := c.SecurityContext.Privileged; p == nil || *p {
		t.Error("the container must say privileged: false")
	}
	unit, err := os.ReadFile("../systemd/switchyardd.service")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "AmbientCapabilities="); ok {
			unitCaps := strings.Fields(v)
			slices.Sort(unitCaps)
			if !slices.Equal(unitCaps, readmeCaps) {
				t.Errorf("switchyardd.service grants %q; README lists %q", unitCaps, readmeCaps)
			}
		}
	}

	// Host paths: each documented in README's Kubernetes section, and the
	// two switchyard cannot do without mounted where the daemon looks.
	k8s := readmeSection(t, readme, "## Kubernetes")
	mounts := map[string]string{} // volume -> mount path
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	hostPaths := map[string]string{} // host path -> mount path
	var configDir string
	for _, v := range pod.Volumes {
		mp, ok := mounts[v.Name]
		if !ok {
			t.Errorf("volume %s is not mounted", v.Name)
		}
		switch {
		case v.HostPath != nil:
			hostPaths[v.HostPath.Path] = mp
			if !strings.Contains(k8s, "| `"+v.HostPath.Path+"` | `"+mp+"`") {
				t.Errorf("host path %s (mounted at %s) is not in README's Kubernetes table", v.HostPath.Path, mp)
			}
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != cm.Metadata.Name {
				t.Errorf("volume %s takes ConfigMap %s; the manifest's is %s", v.Name, v.ConfigMap.Name, cm.Metadata.Name)
			}
			configDir = mp
		default:
			t.Errorf("volume %s is neither a host path nor the ConfigMap", v.Name)
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/run/switchyard"} {
		if hostPaths[p] != p {
			t.Errorf("host path %s must be mounted at %s (it is at %q)", p, p, hostPaths[p])
		}
	}
	if len(hostPaths) != strings.Count(k8s, "\n| `/") {
		t.Errorf("README's Kubernetes table has %d host paths; the manifest mounts %d", strings.Count(k8s, "\n| `/"), len(hostPaths))
	}

	// The config: given with --config inside the ConfigMap's mount, and a
	// file switchyardd accepts.
	var cfgPath string
	for _, a := range c.Command[1:] {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgPath = v
		}
	}
	if cfgPath == "" || configDir == "" || filepath.Dir(cfgPath) != configDir {
		t.Fatalf("--config=%q is not in the ConfigMap's mount %q", cfgPath, configDir)
	}
	data, ok := cm.Data[filepath.Base(cfgPath)]
	if !ok {
		t.Fatalf("the ConfigMap has no key %s", filepath.Base(cfgPath))
	}
	if _, err := config.Parse(strings.NewReader(data)); err != nil {
		t.Errorf("the ConfigMap's %s is not a valid config: %v", filepath.Base(cfgPath), err)
	}
}
