package config

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard-project/switchyard/internal/settings"
)

// Marshal validates c and writes it in the canonical form: one flow mapping
// per binding, labels sorted by name, empty settings left out. Parse reads
// the result back to an equal Config.
func Marshal(c *Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	// The YAML encoder slows down quadratically on long lists (10,000
	// bindings take it 300 ms), so the header and the bindings, whose
	// values are validated and need no escaping, are written directly.
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "version: %d\n", CurrentVersion)
	if len(c.Bindings) > 0 {
		buf.Grow(len(c.Bindings) * 80)
		buf.WriteString("bindings:\n")
		for _, b := range c.Bindings {
			buf.WriteString("  - {label: ")
			writeScalar(&buf, b.Label)
			buf.WriteString(", protocol: ")
			buf.WriteString(b.Protocol.String())
			buf.WriteString(", prefix: ")
			writeScalar(&buf, b.Prefix.String())
			buf.WriteString(`, ports: "`)
			buf.WriteString(b.Ports.String())
			buf.WriteString("\"}\n")
		}
	}

	root := &yaml.Node{Kind: yaml.MappingNode}
	add := func(m *yaml.Node, key string, v *yaml.Node) {
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	}
	if len(c.Labels) > 0 {
		labels := &yaml.Node{Kind: yaml.MappingNode}
		for _, name := range slices.Sorted(maps.Keys(c.Labels)) {
			l := c.Labels[name]
			m := &yaml.Node{Kind: yaml.MappingNode}
			if !l.Grants.IsZero() {
				g := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
				if len(l.Grants.UIDs) > 0 {
					add(g, "uids", ids(l.Grants.UIDs))
				}
				if len(l.Grants.GIDs) > 0 {
					add(g, "gids", ids(l.Grants.GIDs))
				}
				if len(l.Grants.Users) > 0 {
					add(g, "users", texts(l.Grants.Users))
				}
				if len(l.Grants.Groups) > 0 {
					add(g, "groups", texts(l.Grants.Groups))
				}
				add(m, "grants", g)
			}
			if l.Kind != settings.None {
				add(m, "policy", text(l.Kind.String()))
			}
			if !l.Upstream.IsZero() {
				add(m, "upstream", text(l.Upstream.String()))
			}
			if l.Engine != settings.Userspace {
				add(m, "engine", text(string(l.Engine)))
			}
			if len(m.Content) == 0 {
				m.Style = yaml.FlowStyle
			}
			add(labels, name, m)
		}
		add(root, "labels", labels)
	}

	if !c.Daemon.IsZero() {
		m := &yaml.Node{Kind: yaml.MappingNode}
		for _, f := range []struct{ key, value string }{
			{"bypass_cgroup", c.Daemon.BypassCgroup},
			{"control", c.Daemon.Control},
			{"bpffs", c.Daemon.BPFFS},
			{"metrics_addr", c.Daemon.MetricsAddr},
		} {
			if f.value != "" {
				add(m, f.key, text(f.value))
			}
		}
		add(root, "daemon", m)
	}

	if len(root.Content) == 0 {
		return buf.Bytes(), nil
	}
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return buf.Bytes(), nil
}

// text is a string scalar; the encoder quotes it when needed.
func text(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// writeScalar writes a validated label or prefix: plain when the fast
// scanner and YAML both read it as the same string, else double-quoted
// (labels and prefixes contain nothing that needs escaping).
func writeScalar(buf *bytes.Buffer, s string) {
	if plainSafe([]byte(s)) && strings.Trim(s, "0123456789") != "" {
		buf.WriteString(s)
		return
	}
	buf.WriteByte('"')
	buf.WriteString(s)
	buf.WriteByte('"')
}

func ids(vs []uint32) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range vs {
		seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(uint64(v), 10)})
	}
	return seq
}

func texts(vs []string) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range vs {
		seq.Content = append(seq.Content, text(v))
	}
	return seq
}
