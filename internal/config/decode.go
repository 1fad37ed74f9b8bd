package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// Parse reads a config from r and validates it. Problems are reported as
// *Error values naming their line, joined with errors.Join when there are
// several (at most 20 are reported).
func Parse(r io.Reader) (*Config, error) {
	return parseReader(r, "")
}

// Load reads and validates the config file at path. Errors name the file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	return parseReader(f, path)
}

// limits are the caps Parse enforces; tests lower them to check the
// boundaries without files of a hundred megabytes.
type limits struct {
	fileSize, bindings int
	// A large bindings list is read on several CPUs: scanned in at most
	// parts parts of partBytes bytes or more, and built in parts of
	// partItems entries or more. Zero: in one part.
	parts, partBytes, partItems int
}

var defaultLimits = limits{fileSize: MaxFileSize, bindings: MaxBindings,
	parts: min(runtime.GOMAXPROCS(0), 8), partBytes: 1 << 20, partItems: 1 << 14}

func parseReader(r io.Reader, file string) (*Config, error) {
	return parseReaderLimits(r, file, defaultLimits)
}

func parseReaderLimits(r io.Reader, file string, lim limits) (*Config, error) {
	data, err := readAll(r, lim.fileSize)
	if err != nil {
		if file != "" {
			return nil, fmt.Errorf("read config %s: %w", file, err)
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > lim.fileSize {
		return nil, &Error{File: file, Err: fmt.Errorf("%w: the file is larger than the limit of %d bytes (%d MiB); %d bindings fit within it, so check that this is the right file",
			ErrTooLarge, lim.fileSize, lim.fileSize>>20, lim.bindings)}
	}
	return parseBytesLimits(data, file, true, lim)
}

// readAll reads r to its end, or to one byte past limit. A file is read
// into a buffer of its size: io.ReadAll would copy a large one several
// times over as it grows.
func readAll(r io.Reader, limit int) ([]byte, error) {
	lr := io.LimitReader(r, int64(limit)+1)
	f, ok := r.(interface{ Stat() (fs.FileInfo, error) })
	if !ok {
		return io.ReadAll(lr)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > int64(limit) {
		return io.ReadAll(lr)
	}
	// Room for a file that grew meanwhile, and for bytes.Buffer's
	// minimum read, so that it does not grow at the end.
	b := bytes.NewBuffer(make([]byte, 0, fi.Size()+bytes.MinRead+1))
	_, err = b.ReadFrom(lr)
	return b.Bytes(), err
}

// parseBytes parses a whole config. With fast set, it first tries the line
// scanner of fast.go on the bindings section and gives the rest of the
// document to the YAML parser; the result is the same either way.
func parseBytes(data []byte, file string, fast bool) (*Config, error) {
	return parseBytesLimits(data, file, fast, defaultLimits)
}

func parseBytesLimits(data []byte, file string, fast bool, lim limits) (*Config, error) {
	d := &decoder{file: file, maxBindings: lim.bindings, lim: lim}
	if fast {
		if fb, ok := scanBindingsParts(data, lim); ok {
			d.pre = fb
			data = fb.rest
		}
	}
	root, err := decodeYAML(data)
	if err != nil {
		d.errs = append(d.errs, syntaxError(err))
		return nil, d.result()
	}
	d.document(root)
	if err := d.result(); err != nil {
		return nil, err
	}
	return &d.cfg, nil
}

// decodeYAML parses exactly one YAML document; an empty input gives a zero
// node.
func decodeYAML(data []byte) (*yaml.Node, error) {
	if problem := readerProblem(data); problem != "" {
		return nil, &Error{Err: fmt.Errorf("%w: %s", ErrSyntax, problem)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return &root, nil
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
		return &root, nil
	case err != nil:
		return nil, err
	default:
		return nil, &Error{Line: next.Line, Err: fmt.Errorf("%w: a second YAML document starts here; a config is one document, so remove the --- separator", ErrSyntax)}
	}
}

// readerProblem returns what the YAML parser's reader says of the first
// character of data that it refuses (a byte that is not UTF-8, or a control
// character), in its words, or "" if there is none. The reader decodes the
// text in blocks of 512 bytes ahead of the parser, so whether it reports
// such a character or a syntax error a few lines before it depended on
// where the blocks fell: on whether the scanner's bindings were blanked out
// of the text or not. Looked for first, such a character is the error
// either way. Text with a UTF-16 byte order mark is left to the parser
// (the scanner never takes it).
func readerProblem(data []byte) string {
	if len(data) >= 2 && (data[0] == 0xff && data[1] == 0xfe || data[0] == 0xfe && data[1] == 0xff) {
		return ""
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	for i := 0; i < len(data); {
		c := data[i]
		if c < 0x80 {
			if c >= 0x20 && c <= 0x7e || c == '\n' || c == '\t' || c == '\r' {
				i++
				continue
			}
			return "control characters are not allowed"
		}
		var w int
		var v rune
		switch {
		case c&0xe0 == 0xc0:
			w, v = 2, rune(c&0x1f)
		case c&0xf0 == 0xe0:
			w, v = 3, rune(c&0x0f)
		case c&0xf8 == 0xf0:
			w, v = 4, rune(c&0x07)
		default:
			return "invalid leading UTF-8 octet"
		}
		if w > len(data)-i {
			return "incomplete UTF-8 octet sequence"
		}
		for k := 1; k < w; k++ {
			o := data[i+k]
			if o&0xc0 != 0x80 {
				return "invalid trailing UTF-8 octet"
			}
			v = v<<6 + rune(o&0x3f)
		}
		switch {
		case w == 2 && v < 0x80, w == 3 && v < 0x800, w == 4 && v < 0x10000:
			return "invalid length of a UTF-8 sequence"
		case v >= 0xd800 && v <= 0xdfff, v > 0x10ffff:
			return "invalid Unicode character"
		case !(v == 0x85 || v >= 0xa0 && v <= 0xd7ff || v >= 0xe000 && v <= 0xfffd || v >= 0x10000):
			return "control characters are not allowed"
		}
		i += w
	}
	return ""
}

func syntaxError(err error) *Error {
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if v, err := strconv.Atoi(n); err == nil {
				line, msg = v, after
			}
		}
	}
	switch {
	case strings.Contains(msg, "did not find expected alphabetic or numeric character"):
		msg += ` (a value that starts with "*" is a YAML alias: quote it, as in ports: "*")`
	case strings.Contains(msg, "did not find expected node content"),
		strings.Contains(msg, "mapping values are not allowed in this context"):
		msg += ` (IPv6 addresses that start or end with "::", such as ::/0, must be quoted: prefix: "::/0")`
	case strings.Contains(msg, "found character that cannot start any token"):
		msg += " (YAML indents with spaces, not tabs)"
	}
	return &Error{Line: line, Err: fmt.Errorf("%w: %s", ErrSyntax, msg)}
}

// rawBinding is a binding entry as text, before validation.
type rawBinding struct {
	label, protocol, prefix, ports string
	index, line                    int
}

type decoder struct {
	file string
	errs []*Error
	cfg  Config
	raws []rawBinding
	// pre holds bindings read by the fast scanner, if it was used;
	// scanned says that they are the config's bindings.
	pre     *fastBindings
	scanned bool
	// maxBindings is the most bindings accepted (MaxBindings).
	maxBindings int
	lim         limits
}

func (d *decoder) fail(line int, path string, err error) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Path: path, Err: err})
}

func (d *decoder) failf(line int, path string, format string, args ...any) {
	d.fail(line, path, fmt.Errorf(format, args...))
}

// result returns the problems found, sorted by line, or nil.
func (d *decoder) result() error {
	if len(d.errs) == 0 {
		return nil
	}
	for _, e := range d.errs {
		e.File = d.file
	}
	slices.SortStableFunc(d.errs, func(a, b *Error) int { return cmp.Compare(a.Line, b.Line) })
	if len(d.errs) == 1 {
		return d.errs[0]
	}
	n := min(len(d.errs), maxErrors)
	errs := make([]error, 0, n+1)
	for _, e := range d.errs[:n] {
		errs = append(errs, e)
	}
	if more := len(d.errs) - n; more > 0 {
		errs = append(errs, &Error{File: d.file, Err: fmt.Errorf("%d more problems not shown; fix the ones above first", more)})
	}
	return errors.Join(errs...)
}

var topFields = []string{"version", "bindings", "labels", "daemon"}

func (d *decoder) document(root *yaml.Node) {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	empty := n.Kind == 0 || isNull(n)
	if empty {
		d.failf(0, "", "the config is empty; it needs at least a line \"version: %d\"", CurrentVersion)
		return
	}
	var haveVersion bool
	isMap := !empty && d.mapping(n, "")
	if isMap {
		d.fields(n, "", topFields, func(key string, k, v *yaml.Node) {
			switch key {
			case "version":
				haveVersion = true
				d.version(v)
			case "bindings":
				if d.pre != nil && k.Line == d.pre.keyLine && isNull(v) {
					if n := len(d.pre.bs); n > d.maxBindings {
						d.failf(k.Line, "bindings", "%w: %d bindings, more than the limit of %d", ErrTooLarge, n, d.maxBindings)
					} else {
						d.scanned = true
					}
				} else {
					d.bindings(k, v)
				}
			case "labels":
				d.labels(k, v)
			case "daemon":
				d.daemon(v)
			}
		})
	}
	if !haveVersion && isMap {
		d.failf(1, "version", "missing: add a line \"version: %d\" at the top", CurrentVersion)
	}
	d.buildBindings()
}

func (d *decoder) version(v *yaml.Node) {
	n, ok := d.uint32(v, "version")
	if !ok {
		return
	}
	switch {
	case n == CurrentVersion:
		d.cfg.Version = CurrentVersion
	case n > CurrentVersion:
		d.failf(v.Line, "version", "version %d is newer than this switchyard understands (%d): upgrade switchyard", n, CurrentVersion)
	default:
		d.failf(v.Line, "version", "version %d is not supported: use version: %d", n, CurrentVersion)
	}
}

var bindingFields = []string{"label", "protocol", "prefix", "ports"}

func (d *decoder) bindings(k, n *yaml.Node) {
	if !d.sequence(n, "bindings") {
		return
	}
	if len(n.Content) > d.maxBindings {
		d.failf(k.Line, "bindings", "%w: %d bindings, more than the limit of %d", ErrTooLarge, len(n.Content), d.maxBindings)
		return
	}
	d.raws = make([]rawBinding, 0, len(n.Content))
	for i, item := range n.Content {
		path := "bindings[" + strconv.Itoa(i) + "]"
		if isNull(item) {
			d.failf(item.Line, path, "empty entry: a binding needs label, protocol, prefix and ports")
			continue
		}
		if !d.mapping(item, path) {
			continue
		}
		r := rawBinding{index: i, line: item.Line}
		var have [4]bool
		bad := false
		d.fields(item, path, bindingFields, func(key string, _, v *yaml.Node) {
			s, ok := d.str(v, path+"."+key)
			bad = bad || !ok
			switch key {
			case "label":
				r.label, have[0] = s, true
			case "protocol":
				r.protocol, have[1] = s, true
			case "prefix":
				r.prefix, have[2] = s, true
			case "ports":
				r.ports, have[3] = s, true
			}
		})
		for j, ok := range have {
			if !ok {
				bad = true
				d.failf(item.Line, path, "missing field %q: a binding needs label, protocol, prefix and ports", bindingFields[j])
			}
		}
		if !bad {
			d.raws = append(d.raws, r)
		}
	}
}

// buildBindings parses the raw bindings, or takes those the scanner
// parsed, and checks them against each other. A long list of raw bindings
// is parsed in parts side by side (d.lim), with the same result and
// errors, in the same order, as in one.
func (d *decoder) buildBindings() {
	var l list
	var bad []badEntry
	switch {
	case d.scanned:
		l.bs, l.line, bad = d.pre.bs, d.pre.lines, d.pre.bad
	case len(d.raws) > 0:
		l.bs = make([]binding.Binding, len(d.raws))
		l.line = make([]int32, len(d.raws))
		n := 1
		if d.lim.partItems > 0 {
			n = min(max(d.lim.parts, 1), len(d.raws)/d.lim.partItems)
		}
		n = max(n, 1)
		bads := make([][]badEntry, n)
		parallel(n, func(p int) {
			lo, hi := p*len(d.raws)/n, (p+1)*len(d.raws)/n
			for i := lo; i < hi; i++ {
				r := &d.raws[i]
				l.line[i] = int32(r.line)
				b, err := binding.Parse(r.label, r.protocol, r.prefix, r.ports)
				if err != nil {
					bads[p] = append(bads[p], badEntry{index: i, line: r.line, err: err})
					continue
				}
				l.bs[i] = b
			}
		})
		bad = slices.Concat(bads...)
		// Entries the YAML decoder refused are not in d.raws.
		if len(d.raws) > 0 && d.raws[len(d.raws)-1].index != len(d.raws)-1 {
			l.index = make([]int32, len(d.raws))
			for i, r := range d.raws {
				l.index[i] = int32(r.index)
			}
		}
	default:
		return
	}
	for _, e := range bad {
		index := e.index
		if l.index != nil {
			index = int(l.index[e.index])
		}
		d.fail(e.line, "bindings["+strconv.Itoa(index)+"]", e.err)
	}
	if len(bad) > 0 {
		// Leave the refused entries out, and say where the others were.
		if l.index == nil {
			l.index = make([]int32, len(l.bs))
			for i := range l.index {
				l.index[i] = int32(i)
			}
		}
		k, next := 0, 0
		for i := range l.bs {
			if next < len(bad) && bad[next].index == i {
				next++
				continue
			}
			l.bs[k], l.line[k], l.index[k] = l.bs[i], l.line[i], l.index[i]
			k++
		}
		l.bs, l.line, l.index = l.bs[:k], l.line[:k], l.index[:k]
	}
	for _, e := range checkConflicts(&l) {
		e.File = d.file
		d.errs = append(d.errs, e)
	}
	if len(l.bs) > 0 {
		if cap(l.bs) > len(l.bs)+len(l.bs)/8 {
			// Room for one binding per line of a file in block style.
			l.bs = slices.Clone(l.bs)
		}
		d.cfg.Bindings = l.bs
	}
}

func (d *decoder) labels(key, n *yaml.Node) {
	if !d.mapping(n, "labels") {
		return
	}
	if len(n.Content)/2 > MaxLabels {
		d.failf(key.Line, "labels", "%w: %d labels, more than the limit of %d", ErrTooLarge, len(n.Content)/2, MaxLabels)
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name, ok := d.str(k, "labels")
		if !ok {
			continue
		}
		if err := binding.ValidateLabel(name); err != nil {
			d.fail(k.Line, "labels", err)
			continue
		}
		path := "labels." + name
		if first, dup := seen[name]; dup {
			d.failf(k.Line, path, "%w label: already listed at line %d; merge the entries", ErrDuplicate, first)
			continue
		}
		seen[name] = k.Line
		l, ok := d.label(v, path)
		if !ok {
			continue
		}
		if d.cfg.Labels == nil {
			d.cfg.Labels = make(map[string]settings.Label)
		}
		d.cfg.Labels[name] = l
	}
}

var labelFields = []string{"grants", "policy", "upstream", "engine"}

func (d *decoder) label(n *yaml.Node, path string) (settings.Label, bool) {
	var l settings.Label
	if isNull(n) {
		return l, true
	}
	if !d.mapping(n, path) {
		return l, false
	}
	ok := true
	lines := map[string]int{}
	// word reads a policy word; empty means not given.
	word := func(key string, v *yaml.Node, parse func(string) error) {
		lines[key] = v.Line
		s, sok := d.str(v, path+"."+key)
		if !sok {
			ok = false
			return
		}
		if s == "" {
			return
		}
		if err := parse(s); err != nil {
			d.fail(v.Line, path+"."+key, err)
			ok = false
		}
	}
	d.fields(n, path, labelFields, func(key string, _, v *yaml.Node) {
		var err error
		switch key {
		case "grants":
			g, gok := d.grants(v, path+".grants")
			l.Grants, ok = g, ok && gok
		case "policy":
			word(key, v, func(s string) error { l.Kind, err = settings.ParseKind(s); return err })
		case "upstream":
			word(key, v, func(s string) error { l.Upstream, err = settings.ParseUpstream(s); return err })
		case "engine":
			word(key, v, func(s string) error { l.Engine, err = settings.ParseEngine(s); return err })
		}
	})
	if !ok {
		return l, false
	}
	if field, err := l.Policy.Check(); err != nil {
		line, given := lines[field]
		if !given {
			line = n.Line
		}
		d.fail(line, path+"."+field, err)
		return l, false
	}
	return l, true
}

var grantFields = []string{"uids", "gids", "users", "groups"}

func (d *decoder) grants(n *yaml.Node, path string) (settings.Grants, bool) {
	var g settings.Grants
	if isNull(n) {
		return g, true
	}
	if !d.mapping(n, path) {
		return g, false
	}
	ok := true
	d.fields(n, path, grantFields, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		if !d.sequence(v, p) {
			ok = ok && isNull(v)
			return
		}
		for i, item := range v.Content {
			ip := p + "[" + strconv.Itoa(i) + "]"
			switch key {
			case "uids", "gids":
				id, iok := d.uint32(item, ip)
				if iok {
					iok = d.check(item.Line, ip, settings.ValidateID(id))
				}
				if !iok {
					ok = false
					continue
				}
				if key == "uids" {
					g.UIDs = append(g.UIDs, id)
				} else {
					g.GIDs = append(g.GIDs, id)
				}
			case "users", "groups":
				s, sok := d.str(item, ip)
				if sok {
					sok = d.check(item.Line, ip, settings.ValidateName(s))
				}
				if !sok {
					ok = false
					continue
				}
				if key == "users" {
					g.Users = append(g.Users, s)
				} else {
					g.Groups = append(g.Groups, s)
				}
			}
		}
	})
	return g, ok
}

var daemonFields = []string{"bypass_cgroup", "control", "bpffs", "metrics_addr"}

func (d *decoder) daemon(n *yaml.Node) {
	if isNull(n) || !d.mapping(n, "daemon") {
		return
	}
	d.fields(n, "daemon", daemonFields, func(key string, _, v *yaml.Node) {
		p := "daemon." + key
		s, ok := d.str(v, p)
		if !ok {
			return
		}
		var err error
		switch key {
		case "bypass_cgroup":
			d.cfg.Daemon.BypassCgroup, err = s, checkAbsPath(s)
		case "control":
			d.cfg.Daemon.Control, err = s, checkAbsPath(s)
		case "bpffs":
			d.cfg.Daemon.BPFFS, err = s, checkAbsPath(s)
		case "metrics_addr":
			d.cfg.Daemon.MetricsAddr, err = s, checkListenAddr(s)
		}
		d.check(v.Line, p, err)
	})
}

func (d *decoder) check(line int, path string, err error) bool {
	if err != nil {
		d.fail(line, path, err)
		return false
	}
	return true
}

// fields walks the key/value pairs of mapping n. It reports non-string keys,
// repeated keys and keys not in known, and calls fn for the others.
func (d *decoder) fields(n *yaml.Node, path string, known []string, fn func(key string, k, v *yaml.Node)) {
	// Line of each known key, by index; 0 if unseen.
	var buf [8]int
	seen := buf[:]
	if len(known) > len(buf) {
		seen = make([]int, len(known))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			d.failf(k.Line, path, "%w: YAML merge keys (<<) are not supported; write the fields out", ErrUnknownField)
			continue
		}
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			d.failf(k.Line, path, "%w: keys must be plain words; known fields are %s", ErrUnknownField, strings.Join(known, ", "))
			continue
		}
		idx := slices.Index(known, k.Value)
		if idx < 0 {
			d.failf(k.Line, path, "%w %s; known fields are %s", ErrUnknownField, quote(k.Value), strings.Join(known, ", "))
			continue
		}
		if line := seen[idx]; line != 0 {
			d.failf(k.Line, join(path, k.Value), "%w field: already set at line %d", ErrDuplicate, line)
			continue
		}
		seen[idx] = k.Line
		fn(k.Value, k, v)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping (key: value)"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return "a string"
		case "!!int":
			return "a number"
		case "!!float":
			return "a decimal number"
		case "!!bool":
			return "a boolean (" + n.Value + ")"
		case "!!null":
			return "an empty value"
		case "!!timestamp":
			return "a date"
		}
		return "a value tagged " + quote(n.Tag)
	}
	return "nothing"
}

func (d *decoder) alias(n *yaml.Node, path string) bool {
	if n.Kind != yaml.AliasNode {
		return false
	}
	d.failf(n.Line, path, "YAML aliases (*%s) are not supported; write the value out", trunc(n.Value))
	return true
}

// mapping reports whether n is a mapping; if it is neither a mapping nor
// null, it reports an error.
func (d *decoder) mapping(n *yaml.Node, path string) bool {
	if n.Kind == yaml.MappingNode {
		return true
	}
	if !d.alias(n, path) && !isNull(n) {
		d.failf(n.Line, path, "expected a mapping (key: value), got %s", kindName(n))
	}
	return false
}

// sequence reports whether n is a list; if it is neither a list nor null,
// it reports an error.
func (d *decoder) sequence(n *yaml.Node, path string) bool {
	if n.Kind == yaml.SequenceNode {
		return true
	}
	if !d.alias(n, path) && !isNull(n) {
		d.failf(n.Line, path, "expected a list, got %s", kindName(n))
	}
	return false
}

// str reads a string. Plain numbers are taken as their text (ports: 53,
// label: 2024); null is the empty string; other types are errors.
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if d.alias(n, path) {
		return "", false
	}
	if n.Kind == yaml.ScalarNode {
		switch n.Tag {
		case "!!str", "!!int":
			return n.Value, true
		case "!!null":
			return "", true
		}
	}
	hint := ""
	if n.Kind == yaml.ScalarNode {
		hint = "; quote it if you mean the text " + quote(n.Value)
	}
	d.failf(n.Line, path, "expected a string, got %s%s", kindName(n), hint)
	return "", false
}

// uint32 reads a decimal number from 0 to 4294967295.
func (d *decoder) uint32(n *yaml.Node, path string) (uint32, bool) {
	if d.alias(n, path) {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" && n.Value != "" && strings.Trim(n.Value, "0123456789") == "" {
		if v, err := strconv.ParseUint(n.Value, 10, 32); err == nil {
			return uint32(v), true
		}
		d.failf(n.Line, path, "number %s is out of range", quote(n.Value))
		return 0, false
	}
	got := kindName(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		got = quote(n.Value)
	}
	d.failf(n.Line, path, "expected a decimal number, got %s", got)
	return 0, false
}
