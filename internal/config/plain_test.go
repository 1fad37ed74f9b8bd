package config

import (
	"bytes"
	"testing"
)

// plainSafeByRules is plainSafe as its comment states it, a rule at a time.
func plainSafeByRules(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for i, c := range v {
		if c == ':' && (i+1 == len(v)) {
			return false
		}
	}
	hexAddr := func(v []byte) bool {
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
		return bytes.IndexByte(v, ':') < 0
	case c >= '0' && c <= '9':
		digits, dashes := 0, 0
		for _, c := range v {
			switch {
			case c >= '0' && c <= '9':
				digits++
			case c == '-':
				dashes++
			}
		}
		if digits == len(v) {
			return v[0] != '0' || len(v) == 1
		}
		if dashes == 1 && digits == len(v)-1 && v[len(v)-1] != '-' {
			return true
		}
		return hexAddr(v)
	}
	return false
}

// plainSafe, which looks up the classes of bytes in a table, agrees with
// its rules on every string of up to four bytes from an alphabet of each
// class, and on some longer ones.
func TestPlainSafe(t *testing.T) {
	t.Parallel()
	alphabet := []byte("0 19aAfFgGzZ.:/-@_ tTrueflsnNL")
	check := func(v []byte) {
		if got, want := plainSafe(v), plainSafeByRules(v); got != want {
			t.Errorf("plainSafe(%q) = %v, want %v", v, got, want)
		}
	}
	var all func(v []byte)
	all = func(v []byte) {
		check(v)
		if len(v) < 4 {
			for _, c := range alphabet {
				all(append(v, c))
			}
		}
	}
	all(nil)
	for _, s := range []string{"true", "False", "NULL", "10.0.0.0/8", "2001:db8::/64", "8000-8999", "lbl-1", "a:b", "ab:", "1.2.3", "fe80::1", "dead:beef", "0x10", "010", "1e5"} {
		check([]byte(s))
	}
}

// printableASCII, which tests eight bytes at a time, refuses exactly the
// bytes outside ' '..'~', wherever they are.
func TestPrintableASCII(t *testing.T) {
	t.Parallel()
	for c := range 256 {
		for n := range 20 {
			for at := range n {
				l := bytes.Repeat([]byte{'a'}, n)
				l[at] = byte(c)
				want := c >= ' ' && c <= '~'
				if got := printableASCII(l); got != want {
					t.Fatalf("printableASCII(%q) = %v, want %v", l, got, want)
				}
				// The worst neighbours for carries and borrows.
				for _, nb := range []byte{' ', '~'} {
					for k := range l {
						if k != at {
							l[k] = nb
						}
					}
					if got := printableASCII(l); got != want {
						t.Fatalf("printableASCII(%q) = %v, want %v", l, got, want)
					}
				}
			}
		}
	}
}
