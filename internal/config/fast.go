package config

import "bytes"

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
	// One entry per line is the common case; this is an upper bound for
	// flow items and avoids regrowing the slice.
	fb.raws = make([]rawBinding, 0, min(bytes.Count(data[start:], []byte{'\n'})+1, MaxBindings+1))

	indent := -1
	var item *rawBinding
	var have uint8 // bit per field of item
	finish := func() bool {
		if item == nil {
			return true
		}
		if have != 0xf {
			return false
		}
		fb.raws = append(fb.raws, *item)
		item = nil
		// Past MaxBindings the decoder reports the count; the file size
		// limit bounds the list.
		return true
	}
	end := len(data)
	for {
		lineStart := s.pos
		l, ok := s.next()
		if !ok {
			break
		}
		if !printableASCII(l) {
			return nil, false
		}
		if isBlankOrComment(l) {
			continue
		}
		ind := leadingSpaces(l)
		isItem := len(l) >= ind+2 && l[ind] == '-' && l[ind+1] == ' '
		if ind == 0 && !(isItem && indent <= 0) {
			// The next top-level key ends the section.
			if !isTopKey(l) {
				return nil, false
			}
			end = lineStart
			break
		}
		if indent < 0 {
			if !isItem {
				return nil, false
			}
			indent = ind
		}
		switch {
		case isItem && ind == indent:
			if !finish() {
				return nil, false
			}
			body := l[ind+2:]
			item = &rawBinding{index: len(fb.raws), line: s.line}
			have = 0
			if len(body) > 0 && body[0] == '{' {
				if !parseFlowItem(body, item) {
					return nil, false
				}
				have = 0xf
				if !finish() {
					return nil, false
				}
				continue
			}
			if !parseBlockField(body, item, &have) {
				return nil, false
			}
		case item != nil && ind == indent+2:
			if !parseBlockField(l[ind:], item, &have) {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	if !finish() || len(fb.raws) == 0 {
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
