package config

import (
	"bytes"
	"encoding/binary"
	"sync"

	"github.com/switchyard-project/switchyard/internal/binding"
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
	keyLine int    // line of "bindings:"
	rest    []byte // the document with the entries blanked
	// The entries in order: bs holds each one's binding (zero where
	// binding.Parse refused it) and lines its line; bad lists the
	// refused ones, in order.
	bs    []binding.Binding
	lines []int32
	bad   []badEntry
}

// badEntry is an entry that binding.Parse refused.
type badEntry struct {
	index, line int
	err         error
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
		// Room for one entry per line, the common case (an upper bound
		// for flow items), within each part's share of the limit, so
		// that a file of blank lines or comments costs little on many
		// CPUs.
		parts[i] = scanPart{data: data[:to], pos: at, line: line, indent: indent, room: min(n+1, MaxBindings/len(cuts)+1)}
		line += n
	}
	// The other parts' entries are copied after the first's.
	parts[0].room = min(line-fb.keyLine+1, MaxBindings+1)
	parallel(len(parts), func(i int) { parts[i].scan() })

	end := len(data)
	total := 0
	last := len(parts) - 1
	for i := range parts {
		p := &parts[i]
		if !p.ok {
			return nil, false
		}
		total += len(p.bs)
		// Past MaxBindings the decoder reports the count; the file
		// size limit bounds the list.
		if p.end >= 0 {
			end = p.end
			last = i
			break
		}
	}
	if total == 0 {
		return nil, false
	}
	parts = parts[:last+1]
	if len(parts) == 1 {
		fb.bs, fb.lines, fb.bad = parts[0].bs, parts[0].lines, parts[0].bad
	} else {
		// Join the parts after the first, each copied on its own CPU.
		fb.bs, fb.lines = parts[0].bs, parts[0].lines
		if cap(fb.bs) < total || cap(fb.lines) < total {
			fb.bs = append(make([]binding.Binding, 0, total), fb.bs...)
			fb.lines = append(make([]int32, 0, total), fb.lines...)
		}
		fb.bs, fb.lines = fb.bs[:total], fb.lines[:total]
		at := make([]int, len(parts))
		for i := range parts[1:] {
			at[i+1] = at[i] + len(parts[i].bs)
		}
		parallel(len(parts)-1, func(i int) {
			i++
			copy(fb.bs[at[i]:], parts[i].bs)
			copy(fb.lines[at[i]:], parts[i].lines)
			parts[i].bs, parts[i].lines = nil, nil
		})
		for i := range parts {
			for _, e := range parts[i].bad {
				e.index += at[i]
				fb.bad = append(fb.bad, e)
			}
		}
	}

	// Blank out the entries, keeping their line breaks.
	breaks := bytes.Count(data[start:end], []byte{'\n'})
	rest := make([]byte, 0, len(data)-(end-start)+breaks)
	rest = append(rest, data[:start]...)
	rest = append(rest, bytes.Repeat([]byte{'\n'}, breaks)...)
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
// to the first top-level key (end; -1 if none). It parses each entry as it
// finds it, with binding.ParseBytes from the text as it is, or
// binding.Parse of the parts as strings where ParseBytes cannot (with its
// error); the labels of the bindings are copies of their own (one for
// each distinct label, for the first maxInterned), so that the bindings
// keep none of the text.
type scanPart struct {
	data   []byte
	pos    int
	line   int
	indent int
	room   int // capacity for bs and lines

	bs    []binding.Binding
	lines []int32
	bad   []badEntry
	end   int
	ok    bool
}

// maxInterned is how many distinct labels a part keeps one copy of.
const maxInterned = 1 << 12

// span is where a value is in data.
type span struct{ from, to int }

func (p *scanPart) scan() {
	s := scanner{data: p.data, pos: p.pos, line: p.line}
	p.bs = make([]binding.Binding, 0, p.room)
	p.lines = make([]int32, 0, p.room)
	p.end = -1
	labels := make(map[string]string)
	var recent [1024]string
	// intern returns a string equal to l that other bindings share.
	intern := func(l []byte) string {
		// A slot by hash before the map: a map lookup per entry took a
		// tenth of the parse.
		h := uint32(2166136261) // FNV-1a
		for _, c := range l {
			h = (h ^ uint32(c)) * 16777619
		}
		slot := &recent[h%uint32(len(recent))]
		if *slot == string(l) {
			return *slot
		}
		if x, ok := labels[string(l)]; ok {
			*slot = x
			return x
		}
		x := string(l)
		if len(labels) < maxInterned {
			labels[x] = x
			*slot = x
		}
		return x
	}
	indent := p.indent
	var item [4]span // label, protocol, prefix, ports
	var itemLine int
	inItem := false
	var have uint8 // bit per field of item
	finish := func() bool {
		if !inItem {
			return true
		}
		if have != 0xf {
			return false
		}
		inItem = false
		d := p.data
		label := d[item[0].from:item[0].to]
		b, ok := binding.ParseBytes(label, d[item[1].from:item[1].to], d[item[2].from:item[2].to], d[item[3].from:item[3].to])
		if ok {
			b.Label = intern(label)
		} else {
			var err error
			b, err = binding.Parse(string(label), string(d[item[1].from:item[1].to]), string(d[item[2].from:item[2].to]), string(d[item[3].from:item[3].to]))
			if err != nil {
				p.bad = append(p.bad, badEntry{index: len(p.bs), line: itemLine, err: err})
				b = binding.Binding{}
			} else {
				b.Label = intern(label)
			}
		}
		p.bs = append(p.bs, b)
		p.lines = append(p.lines, int32(itemLine))
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
		base := lineStart // where l starts in data
		switch {
		case isItem && ind == indent:
			if !finish() {
				return
			}
			body := l[ind+2:]
			base += ind + 2
			inItem, itemLine, have = true, s.line, 0
			if len(body) > 0 && body[0] == '{' {
				if !parseFlowItem(body, base, &item) {
					return
				}
				have = 0xf
				if !finish() {
					return
				}
				continue
			}
			if !parseBlockField(body, base, &item, &have) {
				return
			}
		case inItem && ind == indent+2:
			if !parseBlockField(l[ind:], base+ind, &item, &have) {
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
	// Eight bytes at a time: a byte of w outside ' '..'~' has its high
	// bit set, in w, in w+1 (0x7f; no byte carries into the next unless
	// one has the high bit already) or in w-0x20 (the lowest byte below
	// ' ' borrows and sets it; bytes above borrow only after that one).
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(l) >= 8 {
		w := binary.LittleEndian.Uint64(l)
		if (w|(w+ones)|(w-' '*ones))&highs != 0 {
			return false
		}
		l = l[8:]
	}
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

// fieldBit returns the bit of a binding field name and its place in an
// item.
func fieldBit(key []byte) (uint8, int) {
	switch string(key) {
	case "label":
		return 1, 0
	case "protocol":
		return 2, 1
	case "prefix":
		return 4, 2
	case "ports":
		return 8, 3
	}
	return 0, 0
}

// parseFlowItem parses "{key: value, ...}" with exactly the four binding
// fields, followed by a trailer, into item; l starts at base in data.
func parseFlowItem(l []byte, base int, item *[4]span) bool {
	i := 1 // past '{'
	var have uint8
	for {
		i += leadingSpaces(l[i:])
		k := i
		for i < len(l) && l[i] >= 'a' && l[i] <= 'z' {
			i++
		}
		bit, f := fieldBit(l[k:i])
		if bit == 0 || have&bit != 0 || i+1 >= len(l) || l[i] != ':' || l[i+1] != ' ' {
			return false
		}
		have |= bit
		i += 1 + leadingSpaces(l[i+1:])
		from, to, n, ok := scalar(l[i:], true)
		if !ok {
			return false
		}
		item[f] = span{base + i + from, base + i + to}
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

// parseBlockField parses "key: value" followed by a trailer into item; l
// starts at base in data.
func parseBlockField(l []byte, base int, item *[4]span, have *uint8) bool {
	i := 0
	for i < len(l) && l[i] >= 'a' && l[i] <= 'z' {
		i++
	}
	bit, f := fieldBit(l[:i])
	if bit == 0 || *have&bit != 0 || i+1 >= len(l) || l[i] != ':' || l[i+1] != ' ' {
		return false
	}
	*have |= bit
	i += 1 + leadingSpaces(l[i+1:])
	from, to, n, ok := scalar(l[i:], false)
	if !ok {
		return false
	}
	item[f] = span{base + i + from, base + i + to}
	return trailer(l[i+n:])
}

// scalar reads a value at the start of l: a quoted string without escapes,
// or a plain scalar that YAML reads as a string or an integer with the same
// text. It returns where the value's text is in l, l[from:to], and the
// number of bytes used. In flow context the value must be followed by a
// space, ',' or '}'; in block context by a space or the end of the line.
func scalar(l []byte, flow bool) (from, to, n int, ok bool) {
	if len(l) == 0 {
		return 0, 0, 0, false
	}
	switch q := l[0]; q {
	case '"', '\'':
		end := bytes.IndexByte(l[1:], q)
		if end < 0 {
			return 0, 0, 0, false
		}
		from, to = 1, 1+end
		if bytes.IndexByte(l[from:to], '\\') >= 0 {
			return 0, 0, 0, false
		}
		n = end + 2
		// A doubled single quote is an escaped quote; give up on it.
		if q == '\'' && n < len(l) && l[n] == '\'' {
			return 0, 0, 0, false
		}
	default:
		for n < len(l) && plainByte(l[n]) {
			n++
		}
		from, to = 0, n
		if !plainSafe(l[:n]) {
			return 0, 0, 0, false
		}
	}
	if n < len(l) {
		switch c := l[n]; {
		case c == ' ':
		case flow && (c == ',' || c == '}'):
		default:
			return 0, 0, 0, false
		}
	}
	return from, to, n, true
}

// Classes of the bytes of plain scalars (byteClass).
const (
	cPlain = 1 << iota // a byte of a plain scalar (plainByte)
	cDigit
	cHex   // a hex digit
	cDot   // '.'
	cMark  // ':' or '/'
	cDash  // '-'
	cColon // ':'
	cLetter
)

var byteClass = func() (t [256]uint8) {
	for c := range 256 {
		var k uint8
		switch {
		case c >= '0' && c <= '9':
			k = cPlain | cDigit | cHex
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			k = cPlain | cHex | cLetter
		case c >= 'g' && c <= 'z' || c >= 'G' && c <= 'Z':
			k = cPlain | cLetter
		case c == '.':
			k = cPlain | cDot
		case c == ':':
			k = cPlain | cMark | cColon
		case c == '/':
			k = cPlain | cMark
		case c == '-':
			k = cPlain | cDash
		case c == '@' || c == '_':
			k = cPlain
		}
		t[c] = k
	}
	return t
}()

func plainByte(c byte) bool { return byteClass[c]&cPlain != 0 }

// plainSafe reports whether YAML reads the plain scalar v as a string or an
// integer with text v. It is deliberately narrow: it accepts words that
// start with a letter (other than true, false and null in any case), runs of
// digits without a leading zero, "digits-digits" port ranges, and addresses and prefixes made of
// hex digits, '.', ':' and '/' that start with a digit or letter and contain
// a ':', a '/' or two or more dots.
func plainSafe(v []byte) bool {
	// ':' must be followed by a character of the scalar: "a:" or "a: " is a
	// mapping key.
	if len(v) == 0 || v[len(v)-1] == ':' {
		return false
	}
	switch k := byteClass[v[0]]; {
	case k&cLetter != 0:
		if hexAddr(v) {
			return true
		}
		if len(v) == 4 && (bytes.EqualFold(v, []byte("true")) || bytes.EqualFold(v, []byte("null"))) ||
			len(v) == 5 && bytes.EqualFold(v, []byte("false")) {
			return false
		}
		// A loop: bytes.IndexByte costs more to start than labels
		// take to read.
		for _, c := range v {
			if c == ':' {
				return false
			}
		}
		return true
	case k&cDigit != 0:
		i := digits(v)
		if i == len(v) {
			// YAML reads 08 and 09 as floats (they are not octal), so
			// numbers with a leading zero are left to it.
			return v[0] != '0' || len(v) == 1
		}
		// A port range, digits-digits.
		if v[i] == '-' && i+1 < len(v) && i+1+digits(v[i+1:]) == len(v) {
			return true
		}
		return hexAddr(v)
	}
	return false
}

// digits is the length of the run of decimal digits at the start of v.
func digits(v []byte) int {
	n := 0
	for n < len(v) && byteClass[v[n]]&cDigit != 0 {
		n++
	}
	return n
}

// hexAddr matches IPv4 and IPv6 addresses and prefixes loosely: hex digits,
// '.', ':' and '/', with a ':', a '/' or at least two dots.
func hexAddr(v []byte) bool {
	dots, marks := 0, 0
	for _, c := range v {
		k := byteClass[c]
		if k&(cHex|cDot|cMark) == 0 {
			return false
		}
		if k&cDot != 0 {
			dots++
		}
		if k&cMark != 0 {
			marks++
		}
	}
	return marks > 0 || dots >= 2
}
