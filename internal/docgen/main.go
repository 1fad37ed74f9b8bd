package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/switchyard-project/switchyard/internal/cli"
	"github.com/switchyard-project/switchyard/internal/server"
)

func main() {
	out := flag.String("o", ".", "directory to write switchyard.1 and switchyardd.8 to")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cliPage, err := cliPage()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "switchyard.1"), []byte(cliPage), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "switchyardd.8"), []byte(daemonPage()), 0o644)
}

// cliHelp runs the switchyard command line in process and returns what it
// printed.
func cliHelp(args ...string) (string, error) {
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), cli.Env{Stdout: &out, Stderr: &errb}, args); code != 0 {
		return "", fmt.Errorf("switchyard %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String(), nil
}

// commandLine matches a command in the list of `switchyard help`.
var commandLine = regexp.MustCompile(`^  ([a-z][a-z-]*) `)

func cliPage() (string, error) {
	usage, err := cliHelp("help")
	if err != nil {
		return "", err
	}
	head, rest, ok := strings.Cut(usage, "\nCommands:\n")
	if !ok {
		return "", fmt.Errorf("switchyard help has no Commands: list")
	}
	list, tail, _ := strings.Cut(rest, "\n\n")
	desc, synopsis, _ := strings.Cut(head, "\nUsage: ")

	var b strings.Builder
	b.WriteString(".TH SWITCHYARD 1 \"\" \"switchyard\" \"User Commands\"\n")
	b.WriteString(".SH NAME\nswitchyard \\- steer connections and datagrams of whole prefixes and port ranges to services' sockets\n")
	b.WriteString(".SH SYNOPSIS\n.B " + roffLine(strings.TrimSpace(synopsis)) + "\n")
	b.WriteString(".SH DESCRIPTION\n" + roffText(desc))
	b.WriteString(".SH COMMANDS\n")
	for line := range strings.SplitSeq(list, "\n") {
		m := commandLine.FindStringSubmatch(line)
		if m == nil || m[1] == "help" {
			continue
		}
		help, err := cliHelp(m[1], "-h")
		if err != nil {
			return "", err
		}
		synopsis, body, _ := strings.Cut(help, "\n\n")
		synopsis = strings.TrimPrefix(synopsis, "Usage: switchyard [--netns PATH] [--control PATH] ")
		b.WriteString(".SS " + roffLine(strings.TrimSpace(synopsis)) + "\n")
		b.WriteString(roffText(body))
	}
	b.WriteString(".SH OPTIONS\n" + roffText(strings.TrimPrefix(tail, "Global flags (before or after the command):\n")))
	b.WriteString(".SH SEE ALSO\n.BR switchyardd (8)\n")
	return b.String(), nil
}

func daemonPage() string {
	var errb bytes.Buffer
	server.Main(server.Env{Stderr: &errb}, []string{"-h"})
	help := errb.String()
	desc, rest, _ := strings.Cut(help, "\nUsage: ")
	synopsis, rest, _ := strings.Cut(rest, "\n")
	_, rest, _ = strings.Cut(rest, "\n") // "Flags (...):"
	flags, tail, _ := strings.Cut(rest, "\n\n")

	var b strings.Builder
	b.WriteString(".TH SWITCHYARDD 8 \"\" \"switchyard\" \"System Administration\"\n")
	b.WriteString(".SH NAME\nswitchyardd \\- switchyard's dispatcher daemon for one network namespace\n")
	b.WriteString(".SH SYNOPSIS\n.B " + roffLine(strings.TrimSpace(synopsis)) + "\n")
	b.WriteString(".SH DESCRIPTION\n" + roffText(desc))
	b.WriteString(".SH OPTIONS\n")
	// flag.PrintDefaults: "  -name type" then "    \tusage".
	for line := range strings.SplitSeq(flags, "\n") {
		switch {
		case strings.HasPrefix(line, "  -"):
			name, typ, _ := strings.Cut(strings.TrimPrefix(line, "  -"), " ")
			b.WriteString(".TP\n.B \\-\\-" + roffLine(name))
			if typ != "" {
				b.WriteString(" \" " + roffLine(typ) + "\"")
			}
			b.WriteString("\n")
		case strings.HasPrefix(line, "    \t"):
			b.WriteString(roffLine(strings.TrimPrefix(line, "    \t")) + "\n")
		}
	}
	b.WriteString(".SH EXIT STATUS\n" + roffText(strings.TrimSpace(tail)))
	b.WriteString(".SH SEE ALSO\n.BR switchyard (1)\n")
	return b.String()
}

// roffLine escapes one line of text for roff.
func roffLine(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffText turns help text into roff: paragraphs split by blank lines, and
// indented lines (examples, lists) kept as they are.
func roffText(s string) string {
	var b strings.Builder
	pre := false
	para := false
	for line := range strings.SplitSeq(strings.Trim(s, "\n"), "\n") {
		indented := strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")
		switch {
		case strings.TrimSpace(line) == "":
			if pre {
				b.WriteString(".fi\n.RE\n")
				pre = false
			}
			para = false
			continue
		case indented && !pre:
			b.WriteString(".RS 4\n.nf\n")
			pre = true
		case !indented && pre:
			b.WriteString(".fi\n.RE\n")
			pre = false
			para = false
		}
		if !pre && !para {
			b.WriteString(".PP\n")
			para = true
		}
		if pre {
			line = strings.TrimPrefix(line, "  ")
		}
		b.WriteString(roffLine(line) + "\n")
	}
	if pre {
		b.WriteString(".fi\n.RE\n")
	}
	return b.String()
}
