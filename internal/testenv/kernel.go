package testenv

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Feature is a kernel feature that a test needs.
type Feature struct {
	// Name names it in messages, e.g. "SCTP".
	Name string
	// Since is the first kernel version that has it, e.g. "5.6".
	Since string
	// Config is the kernel option that builds it, e.g. "CONFIG_IP_SCTP";
	// empty if it cannot be configured out.
	Config string
	// Module is the module to load when Config is "m"; empty if none.
	Module string
	// Probe returns nil if the feature is there (for instance, it makes
	// a socket of the protocol).
	Probe func() error
}

// RequireFeature skips the test only when the kernel proves it cannot have
// the feature, and fails it on a kernel that should have it:
//   - the probe works: go on;
//   - the kernel is older than f.Since: skip;
//   - the kernel's configuration (/proc/config.gz or /boot/config-RELEASE)
//     says f.Config is not set: skip, saying so;
//   - it is a module (=m): fail, saying to load it (tests change nothing of
//     the host's kernel; the probe's socket(2) already asked the kernel to
//     load the protocol's module, net/ipv4/af_inet.c inet_create);
//   - anything else (built in, or no configuration to read): fail.
//
// A module that is merely not loaded is therefore never a reason to skip.
func RequireFeature(tb testing.TB, f Feature) {
	tb.Helper()
	probeErr := f.Probe()
	if probeErr == nil {
		return
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	config, configSrc := kernelConfig(release)
	skip, msg := featureVerdict(f, probeErr, release, config, configSrc, noLoad)
	if skip {
		tb.Skip(msg)
	} else if msg != "" {
		tb.Fatal(msg)
	}
}

// featureVerdict decides what RequireFeature does once the probe has failed
// with probeErr: skip with msg, fail with msg, or go on (msg empty, after
// load made the feature appear). config maps options to their values (nil
// if unknown).
func featureVerdict(f Feature, probeErr error, release string, config map[string]string, configSrc string, load func(string) error) (skip bool, msg string) {
	if older, err := versionBefore(release, f.Since); err == nil && older {
		return true, fmt.Sprintf("kernel %s is older than %s, which brought %s (%v)", release, f.Since, f.Name, probeErr)
	}
	if f.Config != "" && config != nil {
		switch v := config[f.Config]; v {
		case "", "n":
			return true, fmt.Sprintf("kernel %s is built without %s (%s), so it has no %s (%v)", release, f.Config, configSrc, f.Name, probeErr)
		case "m":
			lerr := load(f.Module)
			if perr := f.Probe(); perr == nil {
				return false, ""
			} else {
				return false, fmt.Sprintf("kernel %s has %s as a module (%s=m) that could not be loaded (modprobe %s: %v): %v", release, f.Name, f.Config, f.Module, lerr, perr)
			}
		default:
			return false, fmt.Sprintf("kernel %s is built with %s=%s but has no %s: %v", release, f.Config, v, f.Name, probeErr)
		}
	}
	if f.Module != "" {
		if lerr := load(f.Module); lerr == nil {
			if perr := f.Probe(); perr == nil {
				return false, ""
			}
		}
	}
	if f.Config == "" {
		return false, fmt.Sprintf("kernel %s (%s or newer) has no %s, which cannot be configured out: %v", release, f.Since, f.Name, probeErr)
	}
	return false, fmt.Sprintf("kernel %s (%s or newer) has no %s, and no kernel configuration shows it built without %s: %v", release, f.Since, f.Name, f.Config, probeErr)
}

// noLoad is the module loader of RequireFeature: tests load no module into
// the host's kernel, so it only says what the operator may do.
func noLoad(module string) error {
	if module == "" {
		return fmt.Errorf("no module to load")
	}
	return fmt.Errorf("tests load no kernel module: run modprobe %s and test again", module)
}

// kernelConfig reads the running kernel's build configuration, from
// /proc/config.gz or /boot/config-RELEASE; nil if neither is there.
func kernelConfig(release string) (map[string]string, string) {
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if z, err := gzip.NewReader(f); err == nil {
			if cfg, err := parseKernelConfig(z); err == nil {
				return cfg, "/proc/config.gz"
			}
		}
	}
	p := "/boot/config-" + release
	if f, err := os.Open(p); err == nil {
		defer f.Close()
		if cfg, err := parseKernelConfig(f); err == nil {
			return cfg, p
		}
	}
	return nil, ""
}

// parseKernelConfig reads "CONFIG_X=v" lines; "# CONFIG_X is not set" and
// absent options have no entry.
func parseKernelConfig(r io.Reader) (map[string]string, error) {
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = v
		}
	}
	return cfg, sc.Err()
}

// versionBefore reports whether kernel release (e.g. "6.18.44-fc") is
// older than version (e.g. "5.6").
func versionBefore(release, version string) (bool, error) {
	a, err := parseVersion(release)
	if err != nil {
		return false, err
	}
	b, err := parseVersion(version)
	if err != nil {
		return false, err
	}
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i], nil
		}
	}
	return false, nil
}

func parseVersion(s string) ([3]int, error) {
	var v [3]int
	end := strings.IndexFunc(s, func(r rune) bool { return r != '.' && (r < '0' || r > '9') })
	if end >= 0 {
		s = s[:end]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, fmt.Errorf("kernel version %q", s)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return v, fmt.Errorf("kernel version %q: %w", s, err)
		}
		v[i] = n
	}
	return v, nil
}
