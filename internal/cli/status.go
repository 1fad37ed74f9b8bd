package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// statusWidth is the width the status table keeps to with everyday labels
// and upstreams. Long explanations go under the table, wrapped to it.
const statusWidth = 100

// writeStatusTable prints the labels of st as a table, one row per label
// (and one more per extra socket), then, each on its own line under the
// table, a label's upstream and what of its policy is in force, where that
// says more than the policy's name.
func writeStatusTable(w io.Writer, st *control.StatusResponse) error {
	if len(st.Labels) == 0 {
		fmt.Fprintln(w, "no labels: bind one with 'switchyard bind' or 'switchyard apply'")
		return nil
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "LABEL\tPOLICY\tBINDINGS\tLOOKUPS\tHITS\tMISSING\tBAD\tSOCKETS")
	var notes []string
	for _, l := range st.Labels {
		policy := l.Kind.String()
		var note string
		switch {
		case l.PolicyState != "" && l.PolicyState != policy:
			note = l.PolicyState
		case l.Engine != settings.Userspace:
			note = policy + " to " + l.Upstream.String() + " (engine " + string(l.Engine) + ")"
		case !l.Upstream.IsZero():
			note = policy + " to " + l.Upstream.String()
		}
		if note != "" && l.Engine == settings.Kernel && l.PolicyBytes > 0 {
			note += fmt.Sprintf("; the kernel moved %d of its %d bytes", l.PolicyKernelBytes, l.PolicyBytes)
		}
		if note != "" {
			notes = append(notes, l.Label+": "+note)
		}
		socks := []string{"none (refused)"}
		if len(l.Sockets) > 0 {
			socks = socks[:0]
			for _, s := range l.Sockets {
				where := s.Local.String()
				if !s.Local.IsValid() {
					where = fmt.Sprintf("cookie %d", s.Cookie)
				}
				socks = append(socks, fmt.Sprintf("%s %s %s", s.Protocol, s.Family, where))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", l.Label, policy, l.Bindings, l.Lookups, l.Hits, l.Missing, l.BadSocket, socks[0])
		for _, s := range socks[1:] {
			fmt.Fprintf(tw, "\t\t\t\t\t\t\t%s\n", s)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			io.WriteString(w, wrap(n, statusWidth, "    "))
		}
	}
	return nil
}

// wrap breaks s at spaces into lines of at most width columns (a word
// longer than that gets a line of its own), indenting every line but the
// first.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		switch {
		case i == 0:
		case line+1+len(word) > width:
			b.WriteString("\n" + indent)
			line = len(indent)
		default:
			b.WriteByte(' ')
			line++
		}
		b.WriteString(word)
		line += len(word)
	}
	b.WriteByte('\n')
	return b.String()
}
