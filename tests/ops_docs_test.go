package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// helpCommands are the commands `switchyard help` lists, and for each the
// flags its -h shows.
func helpCommands(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command(bin.switchyard, "help").Output()
	if err != nil {
		t.Fatalf("switchyard help: %v", err)
	}
	_, list, ok := strings.Cut(string(out), "\nCommands:\n")
	if !ok {
		t.Fatalf("switchyard help has no Commands: list:\n%s", out)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	cmds := map[string][]string{}
	flagRE := regexp.MustCompile(`(?m)^  ((?:-[a-z]|--[a-z-]+)(?:, (?:-[a-z]|--[a-z-]+))*)`)
	for line := range strings.SplitSeq(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "help" {
			continue
		}
		h, err := exec.Command(bin.switchyard, f[0], "-h").Output()
		if err != nil {
			t.Fatalf("switchyard %s -h: %v", f[0], err)
		}
		var flags []string
		if _, fl, ok := strings.Cut(string(h), "\nFlags:\n"); ok {
			for _, m := range flagRE.FindAllStringSubmatch(fl, -1) {
				flags = append(flags, strings.Split(m[1], ", ")...)
			}
		}
		cmds[f[0]] = flags
	}
	if len(cmds) < 10 {
		t.Fatalf("switchyard help lists only %d commands:\n%s", len(cmds), out)
	}
	return cmds
}

// The completion scripts are made from the help: every command and every
// flag it shows is in both, bash -n and zsh -n accept them, and bash
// completes commands, flag values, choices and, from the daemon, labels.
func TestCompletion(t *testing.T) {
	t.Parallel()
	cmds := helpCommands(t)
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh"} {
		out, err := exec.Command(bin.switchyard, "completion", sh).Output()
		if err != nil {
			t.Fatalf("switchyard completion %s: %v", sh, err)
		}
		path := filepath.Join(t.TempDir(), "switchyard."+sh)
		os.WriteFile(path, out, 0o644)
		scripts[sh] = path
		if out, err := exec.Command(sh, "-n", path).CombinedOutput(); err != nil {
			t.Errorf("%s -n rejects the completion script: %v\n%s", sh, err, out)
		}
		for name, flags := range cmds {
			// bash: "NAME) ..." in the case lists; zsh: 'NAME:summary'.
			want := "\t" + name + ") "
			if sh == "zsh" {
				want = "'" + name + ":"
			}
			if !strings.Contains(string(out), want) {
				t.Errorf("the %s script lacks command %s (%q)", sh, name, want)
			}
			for _, f := range flags {
				if !strings.Contains(string(out), f) {
					t.Errorf("the %s script lacks flag %s of %s", sh, f, name)
				}
			}
		}
	}

	w := newWorld(t)
	w.mustCLI("bind", "web-a", "tcp", "10.40.0.0/24", "80")
	w.mustCLI("bind", "web-b", "tcp", "10.40.1.0/24", "80")
	w.mustCLI("bind", "dns", "udp", "10.40.2.0/24", "53")
	complete := func(words ...string) string {
		t.Helper()
		script := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _switchyard; printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command("bash", append([]string{"-c", script, "bash", scripts["bash"]}, words...)...)
		cmd.Env = append(os.Environ(), "PATH="+bin.dir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash completion of %q: %v\n%s", words, err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return strings.Join(got, " ")
	}
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"switchyard", "st"}, "status"},
		{[]string{"switchyard", "--control", w.control, "status", ""}, "dns web-a web-b"},
		{[]string{"switchyard", "--control", w.control, "bind", "web"}, "web-a web-b"},
		{[]string{"switchyard", "policy", "--control", w.control, "d"}, "dns"},
		{[]string{"switchyard", "--control", w.control, "bind", "web-a", ""}, "tcp udp"},
		{[]string{"switchyard", "policy", "web-a", "s"}, "splice"},
		{[]string{"switchyard", "bindings", "-o", ""}, "json table yaml"},
		{[]string{"switchyard", "register", "--w"}, "--wait"},
		{[]string{"switchyard", "help", "register"}, "register register-pid"},
		{[]string{"switchyard", "completion", ""}, "bash zsh"},
	} {
		if got := complete(c.words...); got != c.want {
			t.Errorf("completing %q: got %q, want %q", c.words, got, c.want)
		}
	}
}

// The man pages are made from the help: every command of `switchyard help`
// has a section in switchyard(1), every flag of `switchyardd -h` is in
// switchyardd(8), and groff finds nothing to warn about. make install puts
// them, the completion scripts and the binaries where the tools look.
func TestManPagesAndInstall(t *testing.T) {
	t.Parallel()
	cmds := helpCommands(t)
	dest := t.TempDir()
	mk := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "BIN="+filepath.Join(dest, "build"))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{
		"usr/local/bin/switchyard", "usr/local/bin/switchyardd",
		"usr/local/share/man/man1/switchyard.1", "usr/local/share/man/man8/switchyardd.8",
		"usr/local/share/bash-completion/completions/switchyard", "usr/local/share/zsh/site-functions/_switchyard",
		"usr/local/lib/systemd/system/switchyardd.service", "usr/local/lib/systemd/system/switchyardd@.service",
	} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	page := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dest, "usr/local/share/man", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	cliPage := page("man1/switchyard.1")
	for name := range cmds {
		if !strings.Contains(cliPage, "\n.SS "+strings.ReplaceAll(name, "-", `\-`)) {
			t.Errorf("switchyard.1 has no section for command %s", name)
		}
	}
	dh, _ := exec.Command(bin.daemon, "-h").CombinedOutput()
	daemonPage := page("man8/switchyardd.8")
	flags := regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(string(dh), -1)
	if len(flags) < 8 {
		t.Fatalf("switchyardd -h shows %d flags:\n%s", len(flags), dh)
	}
	for _, m := range flags {
		if !strings.Contains(daemonPage, `.B \-\-`+strings.ReplaceAll(m[1], "-", `\-`)) {
			t.Errorf("switchyardd.8 lacks flag --%s", m[1])
		}
	}
	for _, p := range []string{"man1/switchyard.1", "man8/switchyardd.8"} {
		out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(dest, "usr/local/share/man", p)).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff warns about %s: %v\n%s", p, err, out)
		}
	}
}
