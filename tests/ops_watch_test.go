package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/testenv"
)

// configWith is a config file binding label web to prefix on every port.
func configWith(prefix string) string {
	return fmt.Sprintf("version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: %q, ports: \"*\"}\nlabels:\n  web: {}\n", prefix)
}

// waitBound polls `switchyard bindings` until it shows prefix.
func (w *world) waitBound(t *testing.T, prefix string) {
	t.Helper()
	ok, out := testenv.Poll(10*time.Second, func() (bool, string) {
		out := w.mustCLI("bindings")
		return strings.Contains(out, prefix), out
	})
	if !ok {
		t.Fatalf("the config with %s was not put in force within 10s (no SIGHUP sent); bindings:\n%s\nlog:\n%s", prefix, out, w.d.stderr.String())
	}
}

// metricLine returns the first sample line of metric name in a scrape.
func metricLine(scrape, name string) string {
	for line := range strings.SplitSeq(scrape, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			return line
		}
	}
	return ""
}

// metricValue returns the value of series (a name with its labels, as a
// scrape writes them) in a scrape, failing the test if it has none.
func metricValue(t *testing.T, scrape, series string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("the metrics have no %s", series)
	return 0
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// checkConfigMetrics waits until the reload metrics say that the last
// reload succeeded (ok) or failed, after failures failed ones, with the
// file of content inForce in force. (The bindings are in force a moment
// before the metrics are updated.)
func (w *world) checkConfigMetrics(t *testing.T, path string, ok bool, inForce string, failures int) {
	t.Helper()
	wantOK := "switchyard_config_last_reload_success 0"
	if ok {
		wantOK = "switchyard_config_last_reload_success 1"
	}
	want := []string{
		wantOK,
		fmt.Sprintf("switchyard_config_reload_failures_total %d", failures),
		fmt.Sprintf(`switchyard_config_info{file=%q,sha256=%q} 1`, path, sha256Hex(inForce)),
	}
	var m string
	good, why := testenv.Poll(10*time.Second, func() (bool, string) {
		m = w.metrics()
		for _, line := range want {
			name, _, _ := strings.Cut(line, " ")
			name, _, _ = strings.Cut(name, "{")
			if got := metricLine(m, name); got != line {
				return false, fmt.Sprintf("metric %q, want %q", got, line)
			}
		}
		return true, ""
	})
	if !good {
		t.Errorf("%s", why)
	}
	ts := metricLine(m, "switchyard_config_last_reload_timestamp_seconds")
	var at float64
	if _, err := fmt.Sscanf(ts, "switchyard_config_last_reload_timestamp_seconds %g", &at); err != nil ||
		time.Since(time.Unix(int64(at), 0)) > time.Minute {
		t.Errorf("metric %q: want a recent Unix time", ts)
	}
}

// A new version of --config is put in force without SIGHUP however it is
// replaced: by rename (configuration management, most editors), by a write
// in place, or by kubelet's swap of a ConfigMap volume's ..data symlink. A
// broken version is refused, counted, and leaves the running config.
func TestConfigWatch(t *testing.T) {
	t.Parallel()
	t.Run("rename", func(t *testing.T) {
		t.Parallel()
		w := newWorldNoDaemon(t)
		dir := filepath.Join(w.dir, "etc")
		os.Mkdir(dir, 0o755)
		cfg := filepath.Join(dir, "switchyard.yaml")
		first := configWith("10.20.0.0/24")
		os.WriteFile(cfg, []byte(first), 0o644)
		w.d = w.startDaemon("--config", cfg, "--metrics-addr", "127.0.0.1:0")
		w.waitBound(t, "10.20.0.0/24")
		w.checkConfigMetrics(t, cfg, true, first, 0)

		replace := func(content string) {
			t.Helper()
			tmp := filepath.Join(dir, ".switchyard.yaml.new")
			if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, cfg); err != nil {
				t.Fatal(err)
			}
		}
		second := configWith("10.20.1.0/24")
		replace(second)
		w.waitBound(t, "10.20.1.0/24")
		if out := w.mustCLI("bindings"); strings.Contains(out, "10.20.0.0/24") {
			t.Errorf("the old binding stayed:\n%s", out)
		}
		w.checkConfigMetrics(t, cfg, true, second, 0)

		// A broken file: logged, counted, the running config stays.
		w.d.notes.reset()
		replace("version: 1\nbindings:\n  - {label: web, protocol: tcp, prefix: 10.20.2.0/33, ports: \"*\"}\n")
		if !w.d.notes.waitFor("STATUS=reload failed", 10*time.Second) {
			t.Fatalf("no failed reload reported for a broken file:\n%s\nlog:\n%s", w.d.allNotes(t), w.d.stderr.String())
		}
		if out := w.mustCLI("bindings"); !strings.Contains(out, "10.20.1.0/24") || strings.Contains(out, "10.20.2.0") {
			t.Errorf("after a broken file, bindings changed:\n%s", out)
		}
		w.checkConfigMetrics(t, cfg, false, second, 1)
		if log := w.d.stderr.String(); !strings.Contains(log, "reload failed; keeping the running config") || !strings.Contains(log, "10.20.2.0/33") {
			t.Errorf("the log does not say what was wrong with the file:\n%s", log)
		}

		// Fixed again: in force, and the metrics say so.
		third := configWith("10.20.3.0/24")
		replace(third)
		w.waitBound(t, "10.20.3.0/24")
		w.checkConfigMetrics(t, cfg, true, third, 1)
		check := exec.Command("promtool", "check", "metrics")
		check.Stdin = strings.NewReader(w.metrics())
		if out, err := check.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("in-place", func(t *testing.T) {
		t.Parallel()
		w := newWorldNoDaemon(t)
		cfg := filepath.Join(w.dir, "switchyard.yaml")
		os.WriteFile(cfg, []byte(configWith("10.21.0.0/24")), 0o644)
		w.d = w.startDaemon("--config", cfg, "--metrics-addr", "127.0.0.1:0")
		w.waitBound(t, "10.21.0.0/24")
		// os.WriteFile truncates and writes the same inode, as `cat >`
		// and editors that keep the inode do.
		second := configWith("10.21.1.0/24")
		if err := os.WriteFile(cfg, []byte(second), 0o644); err != nil {
			t.Fatal(err)
		}
		w.waitBound(t, "10.21.1.0/24")
		w.checkConfigMetrics(t, cfg, true, second, 0)
	})

	t.Run("configmap", func(t *testing.T) {
		t.Parallel()
		w := newWorldNoDaemon(t)
		// A ConfigMap volume as kubelet lays it out:
		//   switchyard.yaml -> ..data/switchyard.yaml
		//   ..data -> ..2026_12_01_00_00_00.1
		//   ..2026_12_01_00_00_00.1/switchyard.yaml
		vol := filepath.Join(w.dir, "config")
		os.Mkdir(vol, 0o755)
		version := func(n int, content string) string {
			t.Helper()
			name := fmt.Sprintf("..2026_12_01_00_00_00.%d", n)
			if err := os.Mkdir(filepath.Join(vol, name), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(vol, name, "switchyard.yaml"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			return name
		}
		swap := func(name string) {
			t.Helper()
			tmp := filepath.Join(vol, "..data_tmp")
			if err := os.Symlink(name, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
				t.Fatal(err)
			}
		}
		v1 := version(1, configWith("10.22.0.0/24"))
		swap(v1)
		cfg := filepath.Join(vol, "switchyard.yaml")
		if err := os.Symlink("..data/switchyard.yaml", cfg); err != nil {
			t.Fatal(err)
		}
		w.d = w.startDaemon("--config", cfg, "--metrics-addr", "127.0.0.1:0")
		w.waitBound(t, "10.22.0.0/24")

		second := configWith("10.22.1.0/24")
		swap(version(2, second))
		// kubelet removes the old version after the swap.
		os.RemoveAll(filepath.Join(vol, v1))
		w.waitBound(t, "10.22.1.0/24")
		w.checkConfigMetrics(t, cfg, true, second, 0)

		// And again, after the watched target directory has gone.
		third := configWith("10.22.2.0/24")
		swap(version(3, third))
		w.waitBound(t, "10.22.2.0/24")
		w.checkConfigMetrics(t, cfg, true, third, 0)
	})
}

// BenchmarkConfigWatch measures how long a new version of --config, renamed
// over the old one, takes to be in force: from the rename to the first TCP
// connection to an address only the new version binds that reaches the
// label's socket. Reports the median and the maximum over the iterations
// (-benchtime Nx renames).
func BenchmarkConfigWatch(b *testing.B) {
	w := newWorldNoDaemon(b)
	dir := filepath.Join(w.dir, "etc")
	os.Mkdir(dir, 0o755)
	cfg := filepath.Join(dir, "switchyard.yaml")
	os.WriteFile(cfg, []byte(configWith("10.50.255.0/24")), 0o644)
	w.d = w.startDaemon("--config", cfg)
	ln := w.registerTCP("web", "tcp4", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var took []time.Duration
	i := 0
	for b.Loop() {
		i++
		prefix := fmt.Sprintf("10.50.%d.0/24", i%250)
		target := fmt.Sprintf("10.50.%d.1:80", i%250)
		tmp := filepath.Join(dir, ".switchyard.yaml.new")
		if err := os.WriteFile(tmp, []byte(configWith(prefix)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, cfg); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for {
			c, err := w.ns.DialTCP(target, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("%s not in force 10s after the rename: %v\nlog:\n%s", prefix, err, w.d.stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median/rename")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "ms-max/rename")
}
