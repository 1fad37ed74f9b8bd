package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// parseBinding reads LABEL tcp|udp PREFIX PORTS with the shared parser.
func (inv *invocation) parseBinding() (binding.Binding, error) {
	if err := inv.wantArgs(4, 4); err != nil {
		return binding.Binding{}, err
	}
	b, err := binding.Parse(inv.args[0], inv.args[1], inv.args[2], inv.args[3])
	if err != nil {
		return binding.Binding{}, inv.argError(err)
	}
	return b, nil
}

func runBind(inv *invocation) error {
	return changeBinding(inv, "bound", (*control.Client).Bind)
}

func runUnbind(inv *invocation) error {
	return changeBinding(inv, "unbound", (*control.Client).Unbind)
}

// changeBinding sends the binding of the command line with do and says
// what was done.
func changeBinding(inv *invocation, done string, do func(*control.Client, context.Context, binding.Binding) error) error {
	b, err := inv.parseBinding()
	if err != nil {
		return err
	}
	c, err := inv.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := do(c, inv.ctx, b); err != nil {
		return inv.requestError(b.Label, err)
	}
	fmt.Fprintf(inv.stdout(), "%s %s\n", done, b)
	return nil
}

// optionalLabel reads an optional LABEL argument.
func (inv *invocation) optionalLabel() (string, error) {
	if err := inv.wantArgs(0, 1); err != nil {
		return "", err
	}
	if len(inv.args) == 0 {
		return "", nil
	}
	if err := binding.ValidateLabel(inv.args[0]); err != nil {
		return "", inv.argError(err)
	}
	return inv.args[0], nil
}

// bindingJSON is a binding in the CLI's JSON output.
type bindingJSON struct {
	Label    string `json:"label"`
	Protocol string `json:"protocol"`
	Prefix   string `json:"prefix"`
	Ports    string `json:"ports"`
}

func toBindingJSON(b binding.Binding) bindingJSON {
	return bindingJSON{Label: b.Label, Protocol: b.Protocol.String(), Prefix: b.Prefix.String(), Ports: b.Ports.String()}
}

func runBindings(inv *invocation) error {
	label, err := inv.optionalLabel()
	if err != nil {
		return err
	}
	r, err := inv.dialOrPinned()
	if err != nil {
		return err
	}
	defer r.Close()
	if inv.flag("o") == "yaml" {
		return inv.exportConfig(r)
	}
	bs, err := inv.listBindings(r, label)
	if err != nil {
		return err
	}
	if inv.json() {
		out := struct {
			Bindings []bindingJSON `json:"bindings"`
		}{Bindings: make([]bindingJSON, 0, len(bs))}
		for _, b := range bs {
			out.Bindings = append(out.Bindings, toBindingJSON(b))
		}
		return writeJSON(inv.stdout(), out)
	}
	if len(bs) == 0 {
		if label != "" {
			fmt.Fprintf(inv.stdout(), "no bindings for label %s\n", label)
		} else {
			fmt.Fprintln(inv.stdout(), "no bindings")
		}
		return nil
	}
	tw := newTable(inv.stdout())
	fmt.Fprintln(tw, "LABEL\tPROTOCOL\tPREFIX\tPORTS")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Label, b.Protocol, b.Prefix, b.Ports)
	}
	return tw.Flush()
}

// listBindings lists the bindings from the daemon or the pinned state.
func (inv *invocation) listBindings(r *reader, label string) ([]binding.Binding, error) {
	if r.c != nil {
		bs, err := r.c.ListBindings(inv.ctx, label)
		if err != nil {
			return nil, inv.requestError(label, err)
		}
		return bs, nil
	}
	bs, err := r.d.Bindings()
	if err != nil {
		return nil, fmt.Errorf("%s: read the pinned bindings: %w", inv.cmd.name, err)
	}
	if label != "" {
		bs = slices.DeleteFunc(bs, func(b binding.Binding) bool { return b.Label != label })
	}
	return bs, nil
}

func runUnregister(inv *invocation) error {
	if err := inv.wantArgs(3, 3); err != nil {
		return err
	}
	label := inv.args[0]
	if err := binding.ValidateLabel(label); err != nil {
		return inv.argError(err)
	}
	proto, err := binding.ParseProtocol(inv.args[1])
	if err != nil {
		return inv.argError(err)
	}
	fam, err := binding.ParseFamily(inv.args[2])
	if err != nil {
		return inv.argError(err)
	}
	c, err := inv.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Unregister(inv.ctx, label, proto, fam); err != nil {
		return inv.requestError(label, err)
	}
	fmt.Fprintf(inv.stdout(), "unregistered %s %s %s\n", label, proto, fam)
	return nil
}

// statusJSON is the JSON of `switchyard status -o json`.
type statusJSON struct {
	Version string `json:"version"`
	// DaemonRunning is false when the status was read from the pinned
	// state because no daemon answered.
	DaemonRunning bool              `json:"daemon_running"`
	NetNS         uint64            `json:"netns"`
	Labels        []labelStatusJSON `json:"labels"`
}

type labelStatusJSON struct {
	Label             string       `json:"label"`
	Policy            string       `json:"policy"`
	Upstream          string       `json:"upstream"`
	Engine            string       `json:"engine,omitempty"`
	PolicyState       string       `json:"policy_state"`
	Bindings          int          `json:"bindings"`
	Sockets           []socketJSON `json:"sockets"`
	Lookups           uint64       `json:"lookups"`
	Hits              uint64       `json:"hits"`
	Missing           uint64       `json:"missing"`
	BadSocket         uint64       `json:"bad_socket"`
	PolicyBytes       uint64       `json:"policy_bytes"`
	PolicyKernelBytes uint64       `json:"policy_kernel_bytes"`
	PolicyConnections uint64       `json:"policy_connections"`
}

type socketJSON struct {
	Protocol string `json:"protocol"`
	Family   string `json:"family"`
	Local    string `json:"local,omitempty"`
	Cookie   uint64 `json:"cookie"`
}

func runStatus(inv *invocation) error {
	label, err := inv.optionalLabel()
	if err != nil {
		return err
	}
	r, err := inv.dialOrPinned()
	if err != nil {
		return err
	}
	defer r.Close()
	var st *control.StatusResponse
	if r.c != nil {
		if st, err = inv.status(&r.c, label); err != nil {
			return inv.requestError(label, err)
		}
	} else if st, err = inv.pinnedStatus(r, label); err != nil {
		return err
	}
	if inv.json() {
		out := statusJSON{Version: st.Version, DaemonRunning: r.c != nil, NetNS: st.NetNS, Labels: make([]labelStatusJSON, 0, len(st.Labels))}
		for _, l := range st.Labels {
			lj := labelStatusJSON{
				Label: l.Label, Policy: l.Kind.String(), Upstream: l.Upstream.String(), Engine: string(l.Engine),
				PolicyState: l.PolicyState,
				Bindings:    l.Bindings, Sockets: make([]socketJSON, 0, len(l.Sockets)),
				Lookups: l.Lookups, Hits: l.Hits, Missing: l.Missing, BadSocket: l.BadSocket,
				PolicyBytes: l.PolicyBytes, PolicyKernelBytes: l.PolicyKernelBytes, PolicyConnections: l.PolicyConnections,
			}
			for _, s := range l.Sockets {
				sj := socketJSON{Protocol: s.Protocol.String(), Family: s.Family.String(), Cookie: s.Cookie}
				if s.Local.IsValid() {
					sj.Local = s.Local.String()
				}
				lj.Sockets = append(lj.Sockets, sj)
			}
			out.Labels = append(out.Labels, lj)
		}
		return writeJSON(inv.stdout(), out)
	}
	w := inv.stdout()
	if r.c != nil {
		fmt.Fprintf(w, "switchyardd %s, network namespace %d\n", st.Version, st.NetNS)
	} else {
		fmt.Fprintf(w, "switchyardd is not running; pinned state of network namespace %d\n", st.NetNS)
	}
	return writeStatusTable(w, st)
}

func runPolicy(inv *invocation) error {
	if err := inv.wantArgs(2, 3); err != nil {
		return err
	}
	label := inv.args[0]
	if err := binding.ValidateLabel(label); err != nil {
		return inv.argError(err)
	}
	var upstream string
	if len(inv.args) == 3 {
		upstream = inv.args[2]
	}
	p, err := settings.ParsePolicy(inv.args[1], upstream, inv.flag("engine"))
	if err != nil {
		return inv.argError(err)
	}
	c, err := inv.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetPolicy(inv.ctx, label, p); err != nil {
		return inv.requestError(label, err)
	}
	switch {
	case p.Engine != settings.Userspace:
		fmt.Fprintf(inv.stdout(), "policy of %s: %s to %s (engine %s)\n", label, p.Kind, p.Upstream, p.Engine)
	case !p.Upstream.IsZero():
		fmt.Fprintf(inv.stdout(), "policy of %s: %s to %s\n", label, p.Kind, p.Upstream)
	default:
		fmt.Fprintf(inv.stdout(), "policy of %s: %s\n", label, p.Kind)
	}
	return nil
}

// versionTimeout bounds how long version waits for the daemon, which is
// optional to it.
const versionTimeout = 3 * time.Second

type versionJSON struct {
	Version   string   `json:"version"`
	Protocols []uint16 `json:"protocols"`
}

func runVersion(inv *invocation) error {
	if err := inv.wantArgs(0, 0); err != nil {
		return err
	}
	var protos []uint16
	for v := control.MinVersion; v <= control.MaxVersion; v++ {
		protos = append(protos, v)
	}
	client := versionJSON{Version: Version, Protocols: protos}

	var daemon *versionJSON
	var derr error
	ctx, cancel := context.WithTimeout(inv.ctx, versionTimeout)
	defer cancel()
	sub := *inv
	sub.ctx = ctx
	if c, err := sub.dial(); err != nil {
		derr = err
	} else {
		v, err := c.Version(ctx)
		c.Close()
		if err != nil {
			derr = inv.requestError("", err)
		} else {
			daemon = &versionJSON{Version: v.Version, Protocols: v.Protocols}
		}
	}

	if inv.json() {
		out := struct {
			Client      versionJSON  `json:"client"`
			Daemon      *versionJSON `json:"daemon"`
			DaemonError string       `json:"daemon_error,omitempty"`
		}{Client: client, Daemon: daemon}
		if derr != nil {
			out.DaemonError = strings.TrimPrefix(derr.Error(), "version: ")
		}
		return writeJSON(inv.stdout(), out)
	}
	w := inv.stdout()
	fmt.Fprintf(w, "switchyard %s (control protocol %s)\n", client.Version, joinUint16(client.Protocols))
	if daemon != nil {
		fmt.Fprintf(w, "switchyardd %s (control protocol %s)\n", daemon.Version, joinUint16(daemon.Protocols))
	} else {
		fmt.Fprintf(w, "switchyardd: not reachable: %s\n", strings.TrimPrefix(derr.Error(), "version: "))
	}
	return nil
}

func joinUint16(vs []uint16) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ", ")
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
