package config

import (
	"bytes"
	"sync"
)

// The YAML parser is about ten times slower than the scanner here (figures
// in doc.go, "Speed"). Almost all of a large config file is its
// bindings list, and almost every bindings list uses one line per entry in a
// small subset of YAML (the form Marshal writes) or short block mappings. The
// scanner here reads that subset directly: it handles a document that
// starts with comments, blank lines and "version: N" lines, followed by a
// top-level "bindings:" whose entries are all in the subset and end at the
// next top-level key. The rest of the document, with the entries blanked out
// (so "bindings:" has no value, and line numbers are kept), goes to the YAML
// parser, and the decoder takes the scanned entries as the value of the
// "bindings" key on keyLine.
//
// The scanner never reports errors: on anything outside the subset it gives
// up and the whole file goes to the YAML parser. It only accepts text that
// the YAML parser reads the same way, which FuzzParse checks.

type fastBindings struct {
	raws    []rawBinding
	keyLine int    // line of "bindings:"
	rest    []byte // the document with the entries blanked
}

// scanBindings tries the fast path on data.
func scanBindings(data []byte) (*fastBindings, bool) {
	return scanBindingsParts(data, defaultLimits)
}

// scanBindingsParts is scanBindings, with a large bindings section cut into
// parts at entries that start a line (lim.partBytes, lim.parts) and the
// parts scanned side by side. A part is read exactly as the whole section
// would read those lines, as each begins with an entry at the section's
// indentation, where one scan would start an entry too, and knows its first
// line number and entry index; the parts are then joined in order, up to
// the part that found the end of the section.
func scanBindingsParts(data []byte, lim limits) (*fastBindings, bool) {
	s := scanner{data: data}

	// Prefix: only lines that cannot open a multi-line construct.
	for {
		l, ok := s.next()
		if !ok {
			return nil, false
		}
		if isBlankOrComment(l) {
			continue
		}
		if isVersionLine(l) {
			continue
		}
		if isBindingsKey(l) {
			break
		}
		return nil, false
	}
	fb := &fastBindings{keyLine: s.line}
	start := s.pos
	// The section's first line that is not blank or a comment opens its
	// first entry and sets the indentation of every entry.
	indent := -1
	for t := (scanner{data: data, pos: start}); ; {
		l, ok := t.next()
		if !ok {
			return nil, false
		}
		if isBlankOrComment(l) {
			continue
		}
		indent = leadingSpaces(l)
		if !opensEntry(l, indent) {
			return nil, false
		}
		break
	}
	cuts := append([]int{start}, cutPoints(data, start, indent, lim)...)
	parts := make([]scanPart, len(cuts))
	line := fb.keyLine
	for i, at := range cuts {
		to := len(data)
		if i+1 < len(cuts) {
			to = cuts[i+1]
		}
		n := bytes.Count(data[at:to], []byte{'\n'})
		// The other parts' entries are appended to the first's: their
		// own room is bounded by their share of the limit, so that a
		// file of blank lines or comments costs little on many CPUs.
		parts[i] = scanPart{data: data[:to], pos: at, line: line, indent: indent, lines: min(n+1, MaxBindings/len(cuts)+1)}
		line += n
	}
	// One entry per line is the common case; this is an upper bound for
	// flow items and avoids regrowing the slice, which the other parts'
	// entries are appended to.
	parts[0].lines = min(line-fb.keyLine+1, MaxBindings+1)
	parallel(len(parts), func(i int) { parts[i].scan() })

	end := len(data)
	for i := range parts {
		p := &parts[i]
		if !p.ok {
			return nil, false
		}
		if i == 0 {
			fb.raws = p.raws
		} else {
			n := len(fb.raws)
			for _, r := range p.raws {
				r.index += n
				fb.raws = append(fb.raws, r)
			}
		}
		// Past MaxBindings the decoder reports the count; the file
		// size limit bounds the list.
		if p.end >= 0 {
			end = p.end
			break
		}
	}
	if len(fb.raws) == 0 {
		return nil, false
	}

	// Blank out the entries, keeping their line breaks.
	rest := make([]byte, 0, len(data)-(end-start)+bytes.Count(data[start:end], []byte{'\n'}))
	rest = append(rest, data[:start]...)
	for _, c := range data[start:end] {
		if c == '\n' {
			rest = append(rest, '\n')
		}
	}
	fb.rest = append(rest, data[end:]...)
	return fb, true
}

// cutPoints returns where the bindings section from start is cut into
// parts: at most lim.parts parts of about lim.partBytes bytes or more, each
// after the first starting at a line that opens an entry at indentation
// indent, in order.
func cutPoints(data []byte, start, indent int, lim limits) []int {
	size := len(data) - start
	if lim.partBytes <= 0 || size < 2*lim.partBytes {
		return nil
	}
	n := min(max(lim.parts, 1), size/lim.partBytes)
	var cuts []int
	prev := start
	for k := 1; k < n; k++ {
		at := lineAt(data, max(start+k*size/n, prev+1))
		for at < len(data) && !opensEntry(data[at:], indent) {
			at = lineAt(data, at+1)
		}
		if at >= len(data) {
			break
		}
		cuts = append(cuts, at)
		prev = at
	}
	return cuts
}

// lineAt returns the start of the first line of data that starts at or
// after at, or len(data).
func lineAt(data []byte, at int) int {
	if at >= len(data) {
		return len(data)
	}
	if at > 0 && data[at-1] != '\n' {
		i := bytes.IndexByte(data[at:], '\n')
		if i < 0 {
			return len(data)
		}
		at += i + 1
	}
	return at
}

// opensEntry reports whether the line at the start of l opens an entry at
// indentation indent: indent spaces, then "- ".
func opensEntry(l []byte, indent int) bool {
	return len(l) >= indent+2 && leadingSpaces(l[:indent]) == indent && l[indent] == '-' && l[indent+1] == ' '
}

// scanPart scans the entries of one part of the bindings section: the
// lines of data from pos, the first of them line+1, to the end of data or
// to the first top-level key (end; -1 if none).
type scanPart struct {
	data   []byte
	pos    int
	line   int
	indent int
	lines  int // capacity for raws

	raws []rawBinding
	end  int
	ok   bool
}

func (p *scanPart) scan() {
	s := scanner{data: p.data, pos: p.pos, line: p.line}
	p.raws = make([]rawBinding, 0, p.lines)
	p.end = -1
	indent := p.indent
	var item *rawBinding
	var have uint8 // bit per field of item
	finish := func() bool {
		if item == nil {
			return true
		}
		if have != 0xf {
			return false
		}
		p.raws = append(p.raws, *item)
		item = nil
		return true
	}
	for {
		lineStart := s.pos
		l, ok := s.next()
		if !ok {
			break
		}
		if !printableASCII(l) {
			return
		}
		if isBlankOrComment(l) {
			continue
		}
		ind := leadingSpaces(l)
		isItem := len(l) >= ind+2 && l[ind] == '-' && l[ind+1] == ' '
		if ind == 0 && !(isItem && indent == 0) {
			// The next top-level key ends the section.
			if !isTopKey(l) {
				return
			}
			p.end = lineStart
			break
		}
		switch {
		case isItem && ind == indent:
			if !finish() {
				return
			}
			body := l[ind+2:]
			item = &rawBinding{index: len(p.raws), line: s.line}
			have = 0
			if len(body) > 0 && body[0] == '{' {
				if !parseFlowItem(body, item) {
					return
				}
				have = 0xf
				if !finish() {
					return
				}
				continue
			}
			if !parseBlockField(body, item, &have) {
				return
			}
		case item != nil && ind == indent+2:
			if !parseBlockField(l[ind:], item, &have) {
				return
			}
		default:
			return
		}
	}
	p.ok = finish()
}

// parallel calls fn(0), ..., fn(n-1), each but the first on a goroutine of
// its own, and returns when all have returned.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	if n > 0 {
		fn(0)
	}
	wg.Wait()
}

type scanner struct {
	data []byte
	pos  int // start of the next line
	line int // number of the line last returned
}

// next returns the next line without its line break.
func (s *scanner) next() ([]byte, bool) {
	if s.pos >= len(s.data) {
		return nil, false
	}
	rest := s.data[s.pos:]
	n := bytes.IndexByte(rest, '\n')
	if n < 0 {
		n = len(rest)
		s.pos = len(s.data)
	} else {
		s.pos += n + 1
	}
	s.line++
	return rest[:n], true
}

func printableASCII(l []byte) bool {
	for _, c := range l {
		if c < ' ' || c > '~' {
			return false
		}
	}
	return true
}

func leadingSpaces(l []byte) int {
	n := 0
	for n < len(l) && l[n] == ' ' {
		n++
	}
	return n
}

func isBlankOrComment(l []byte) bool {
	n := leadingSpaces(l)
	return n == len(l) || l[n] == '#'
}

// trailer reports whether l is empty, spaces, or spaces and a comment.
func trailer(l []byte) bool {
	n := leadingSpaces(l)
	return n == len(l) || (n > 0 && l[n] == '#')
}

// isVersionLine matches "version: " and digits, then a trailer.
func isVersionLine(l []byte) bool {
	rest, ok := bytes.CutPrefix(l, []byte("version:"))
	if !ok {
		return false
	}
	n := leadingSpaces(rest)
	if n == 0 {
		return false
	}
	rest = rest[n:]
	d := 0
	for d < len(rest) && rest[d] >= '0' && rest[d] <= '9' {
		d++
	}
	return d > 0 && d <= 9 && trailer(rest[d:])
}

func isBindingsKey(l []byte) bool {
	rest, ok := bytes.CutPrefix(l, []byte("bindings:"))
	return ok && trailer(rest)
}

// isTopKey matches a plain key at column 0 followed by ':' and a space or
// the end of the line.
func isTopKey(l []byte) bool {
	i := 0
	for i < len(l) && (l[i] >= 'a' && l[i] <= 'z' || l[i] == '_') {
		i++
	}
	return i > 0 && i < len(l) && l[i] == ':' && (i+1 == len(l) || l[i+1] == ' ')
}

// fieldBit returns the bit of a binding field name and where to store it.
func fieldBit(key []byte, r *rawBinding) (uint8, *string) {
	switch string(key) {
	case "label":
		return 1, &r.label
	case "protocol":
		return 2, &r.protocol
	case "prefix":
		return 4, &r.prefix
	case "ports":
		return 8, &r.ports
	}
	return 0, nil
}

// parseFlowItem parses "{key: value, ...}" with exactly the four binding
// fields, followed by a trailer.
func parseFlowItem(l []byte, r *rawBinding) bool {
	i := 1 // past '{'
	var have uint8
	for {
		i += leadingSpaces(l[i:])
		k := i
		for i < len(l) && l[i] >= 'a' && l[i] <= 'z' {
			i++
		}
		bit, dst := fieldBit(l[k:i], r)
		if bit == 0 || have&bit != 0 || i+1 >= len(l) || l[i] != ':' || l[i+1] != ' ' {
			return false
		}
		have |= bit
		i += 1 + leadingSpaces(l[i+1:])
		v, n, ok := scalar(l[i:], true)
		if !ok {
			return false
		}
		*dst = v
		i += n
		i += leadingSpaces(l[i:])
		if i >= len(l) {
			return false
		}
		if l[i] == '}' {
			return have == 0xf && trailer(l[i+1:])
		}
		if l[i] != ',' {
			return false
		}
		i++
	}
}

// parseBlockField parses "key: value" followed by a trailer.
func parseBlockField(l []byte, r *rawBinding, have *uint8) bool {
	i := 0
	for i < len(l) && l[i] >= 'a' && l[i] <= 'z' {
		i++
	}
	bit, dst := fieldBit(l[:i], r)
	if bit == 0 || *have&bit != 0 || i+1 >= len(l) || l[i] != ':' || l[i+1] != ' ' {
		return false
	}
	*have |= bit
	i += 1 + leadingSpaces(l[i+1:])
	v, n, ok := scalar(l[i:], false)
	if !ok {
		return false
	}
	*dst = v
	return trailer(l[i+n:])
}

// scalar reads a value at the start of l: a quoted string without escapes,
// or a plain scalar that YAML reads as a string or an integer with the same
// text. It returns the value and the number of bytes used. In flow context
// the value must be followed by a space, ',' or '}'; in block context by a
// space or the end of the line.
func scalar(l []byte, flow bool) (string, int, bool) {
	if len(l) == 0 {
		return "", 0, false
	}
	var v []byte
	n := 0
	switch q := l[0]; q {
	case '"', '\'':
		end := bytes.IndexByte(l[1:], q)
		if end < 0 {
			return "", 0, false
		}
		v = l[1 : 1+end]
		if bytes.IndexByte(v, '\\') >= 0 {
			return "", 0, false
		}
		n = end + 2
		// A doubled single quote is an escaped quote; give up on it.
		if q == '\'' && n < len(l) && l[n] == '\'' {
			return "", 0, false
		}
	default:
		for n < len(l) && plainByte(l[n]) {
			n++
		}
		v = l[:n]
		if !plainSafe(v) {
			return "", 0, false
		}
	}
	if n < len(l) {
		switch c := l[n]; {
		case c == ' ':
		case flow && (c == ',' || c == '}'):
		default:
			return "", 0, false
		}
	}
	return string(v), n, true
}

func plainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '-' || c == '/' || c == ':' || c == '@' || c == '_'
}

// plainSafe reports whether YAML reads the plain scalar v as a string or an
// integer with text v. It is deliberately narrow: it accepts words that
// start with a letter (other than true, false and null in any case), runs of
// digits without a leading zero, "digits-digits" port ranges, and addresses and prefixes made of
// hex digits, '.', ':' and '/' that start with a digit or letter and contain
// a ':', a '/' or two or more dots.
func plainSafe(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	// ':' must be followed by a character of the scalar: "a:" or "a: " is a
	// mapping key.
	for i, c := range v {
		if c == ':' && (i+1 == len(v)) {
			return false
		}
	}
	c := v[0]
	switch {
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		if hexAddr(v) {
			return true
		}
		if len(v) == 4 && (bytes.EqualFold(v, []byte("true")) || bytes.EqualFold(v, []byte("null"))) ||
			len(v) == 5 && bytes.EqualFold(v, []byte("false")) {
			return false
		}
		for _, c := range v {
			if c == ':' {
				return false
			}
		}
		return true
	case c >= '0' && c <= '9':
		digits, dashes, dots := 0, 0, 0
		for _, c := range v {
			switch {
			case c >= '0' && c <= '9':
				digits++
			case c == '-':
				dashes++
			case c == '.':
				dots++
			}
		}
		if digits == len(v) {
			// YAML reads 08 and 09 as floats (they are not octal), so
			// numbers with a leading zero are left to it.
			return v[0] != '0' || len(v) == 1
		}
		if dashes == 1 && digits == len(v)-1 && v[len(v)-1] != '-' {
			return true
		}
		return hexAddr(v)
	}
	return false
}

// hexAddr matches IPv4 and IPv6 addresses and prefixes loosely: hex digits,
// '.', ':' and '/', with a ':', a '/' or at least two dots.
func hexAddr(v []byte) bool {
	dots, marks := 0, 0
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
		case c == '.':
			dots++
		case c == ':' || c == '/':
			marks++
		default:
			return false
		}
	}
	return marks > 0 || dots >= 2
}
